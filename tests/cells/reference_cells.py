"""The paper's cells transcribed by hand into plain PyTorch, independently of the compiler.

Each takes the parameters by name (`p["W_xi"]` is (n, n) and acts as `v @ W.T`), x and the state
tuple, and returns the new state tuple (h first).
"""

import torch

sig, tanh = torch.sigmoid, torch.tanh


def lin(p, name, v):
    return v @ p[name].T


def tanh_rnn(p, x, h):
    return (tanh(lin(p, "W_xh", x) + lin(p, "W_hh", h) + p["b_h"]),)


def lstm(p, x, h, c, gates="jfo", output=sig):
    """§2 with a sigmoid output gate (`output=tanh`: as printed); `gates` lists the gates kept:
    j the input gate scaling the candidate i, f the forget gate, o the output gate (LSTM-i drops
    j, LSTM-f f, LSTM-o o)."""
    def gate(act, name):
        return act(lin(p, f"W_x{name}", x) + lin(p, f"W_h{name}", h) + p[f"b_{name}"])

    candidate = gate(tanh, "i")
    written = candidate * gate(sig, "j") if "j" in gates else candidate
    kept = c * gate(sig, "f") if "f" in gates else c
    new_c = kept + written
    new_h = tanh(new_c) * gate(output, "o") if "o" in gates else tanh(new_c)
    return new_h, new_c


def gru(p, x, h):
    r = sig(lin(p, "W_xr", x) + lin(p, "W_hr", h) + p["b_r"])
    z = sig(lin(p, "W_xz", x) + lin(p, "W_hz", h) + p["b_z"])
    candidate = tanh(lin(p, "W_xh", x) + lin(p, "W_hh", r * h) + p["b_h"])
    return (z * h + (1 - z) * candidate,)


def mut1(p, x, h):
    z = sig(lin(p, "W_xz", x) + p["b_z"])
    r = sig(lin(p, "W_xr", x) + lin(p, "W_hr", h) + p["b_r"])
    return (tanh(lin(p, "W_hh", r * h) + tanh(x) + p["b_h"]) * z + h * (1 - z),)


def mut2(p, x, h):
    z = sig(lin(p, "W_xz", x) + lin(p, "W_hz", h) + p["b_z"])
    r = sig(x + lin(p, "W_hr", h) + p["b_r"])
    return (tanh(lin(p, "W_hh", r * h) + lin(p, "W_xh", x) + p["b_h"]) * z + h * (1 - z),)


def mut3(p, x, h):
    z = sig(lin(p, "W_xz", x) + lin(p, "W_hz", tanh(h)) + p["b_z"])
    r = sig(lin(p, "W_xr", x) + lin(p, "W_hr", h) + p["b_r"])
    return (tanh(lin(p, "W_hh", r * h) + lin(p, "W_xh", x) + p["b_h"]) * z + h * (1 - z),)


REFERENCES = {
    "tanh": tanh_rnn,
    "lstm": lstm,
    "lstm-f": lambda p, x, h, c: lstm(p, x, h, c, gates="jo"),
    "lstm-i": lambda p, x, h, c: lstm(p, x, h, c, gates="fo"),
    "lstm-o": lambda p, x, h, c: lstm(p, x, h, c, gates="jf"),
    "lstm-b": lstm,
    "gru": gru,
    "mut1": mut1,
    "mut2": mut2,
    "mut3": mut3,
    "lstm-as-printed": lambda p, x, h, c: lstm(p, x, h, c, output=tanh),
}
