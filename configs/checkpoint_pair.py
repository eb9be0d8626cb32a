"""Two given checkpoints (Hugging Face layout) through the engine: curves and barriers.

Nothing is trained: the endpoints are the weights of two local checkpoint directories
(config.json + safetensors, sharded or not; GPT-2, GPT-NeoX/Pythia or Llama-family,
one architecture), B is aligned to A by every method of `config.eval.methods`, and the
loss and token error are measured along the line between them on text tokenized by
checkpoint A's own tokenizer.json (`config.data.tokenizer="checkpoint"`):

    lmc run --config=configs/checkpoint_pair.py --workdir=runs/pythia_seeds \\
        --config.checkpoints.a=/models/pythia-70m-seed1 \\
        --config.checkpoints.b=/models/pythia-70m-seed2 \\
        --config.data.name=text:dir --config.data.dir=/data/my_text

The data: any text source of `lmc.data` (`text:dir` over a directory of text files,
`text:code` = the Python standard library, the default), tokenized. The same config
with `--config.experiment=merge_many` and `--config.checkpoints.more="('/models/c',)"`
merges all the checkpoints (Git Re-Basin's MergeMany) and reports each model, their
plain average and the merge. The aligned B is not written out; to export an aligned
or merged model in the same layout, see `lmc.models.hub.save` (docs/guide/your_model.md, "Importing
checkpoints").

Methods: the default set is the affordable one for real sizes (docs/guide/your_model.md, "Importing
checkpoints", has the cost per size from benchmarks/align_scale.py); `ste` and
`learned_matching` train through the whole model and are left out by default.
`weight_matching_heads`, `weight_matching_orthogonal` and `learned_matching` need
attention heads as nested units: grouped-query Llama models (num_key_value_heads <
num_attention_heads) have none in the traced spec, and those methods are reported as
failed there while the others run.

Literature: Li & Shen (2026) report small barriers between billion-parameter
pretrained transformers after learned matching; PolyPythia (van der Wal et al. 2025)
released several seeds per Pythia size for such seed studies.
"""

from lmc.config_base import lm_config


def get_config(arg: str | None = None):
    del arg
    c = lm_config()
    c.experiment = "pair"  # or merge_many (with checkpoints.more)
    c.model.name = "checkpoint"  # the architecture of config.checkpoints.a
    c.checkpoints.a = ""  # required: checkpoint directory of endpoint a
    c.checkpoints.b = ""  # required: checkpoint directory of endpoint b
    c.data.name = "text:code"  # any text:* source; text:dir reads config.data.dir
    c.data.tokenizer = "checkpoint"  # checkpoint a's tokenizer.json
    c.data.context = 128  # tokens per window
    c.data.eval_windows = 64  # evaluation windows per split
    c.eval.batch_size = 16  # windows per evaluation batch
    c.eval.num_alphas = 9  # points of the curve, ends included
    c.eval.methods = ("naive", "weight_matching", "activation_matching", "weight_matching_heads",
                      "weight_matching_orthogonal")  # fmt: skip
    c.batch_size = 8  # windows per batch of data-driven alignment (activation matching)
    c.align.activation_batches = 4  # activation matching: training batches correlated
    c.align.learned_steps = 200  # learned_matching (when added): Adam steps
    return c
