"""What the experiment modules share: data and model from a config (`setup`), the
alignment methods (`methods`), comparing a pair (`compare`), sweep-shaped results
(`sweep`), the instability onset (`onset`), Markdown tables (`tables`) and the workdir's
bookkeeping (`workdir`). No experiment lives here; `lmc.experiments.EXPERIMENTS` lists them.
"""
