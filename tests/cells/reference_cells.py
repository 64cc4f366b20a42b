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


def lstm(p, x, h, c, gates="ijfo"):
    """§2; `gates` lists the parts kept (LSTM-f drops f, LSTM-i drops i, LSTM-o drops o)."""
    def gate(act, name):
        return act(lin(p, f"W_x{name}", x) + lin(p, f"W_h{name}", h) + p[f"b_{name}"])

    i = gate(tanh, "i") if "i" in gates else None
    j = gate(sig, "j")
    f = gate(sig, "f") if "f" in gates else None
    o = gate(tanh, "o") if "o" in gates else None
    kept = c * f if f is not None else c
    new_c = kept + (i * j if i is not None else j)
    new_h = tanh(new_c) * o if o is not None else tanh(new_c)
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
    "lstm-f": lambda p, x, h, c: lstm(p, x, h, c, gates="ijo"),
    "lstm-i": lambda p, x, h, c: lstm(p, x, h, c, gates="jfo"),
    "lstm-o": lambda p, x, h, c: lstm(p, x, h, c, gates="ijf"),
    "lstm-b": lstm,
    "gru": gru,
    "mut1": mut1,
    "mut2": mut2,
    "mut3": mut3,
}
