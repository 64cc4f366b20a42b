"""The values every layer shares, in plain Python (no torch, no SQL): a setting and the
hyperparameter space it comes from (`settings`, §3.7), the parameter budget (`budget`), an
evaluation's options (`options`), the job an executor runs (`job`) and the `Result` it returns
(`result`). Search, storage, executors and training all import these; these import none of
them."""
