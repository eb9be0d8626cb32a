"""Git Re-Basin's MLP (3 hidden layers x 512) on Fashion-MNIST, independent inits.

Launch:

    lmc run --config=configs/mlp_fashion_mnist.py --workdir=runs/mlp_fmnist

Literature: Ainsworth et al. (2022, "Git Re-Basin", Fig. 2) train this MLP on MNIST and
Fashion-MNIST: naive interpolation between independently trained models shows a
clear loss barrier, weight matching reduces it to nearly zero. Data: Debian package
`dataset-fashion-mnist` (or set $LMC_FASHION_MNIST_DIR).
"""

from lmc.config_base import base_config


def get_config(arg: str | None = None):
    del arg
    c = base_config()
    c.data.name = "fashion_mnist"
    c.data.augment = False  # measured without crops/flips (Git Re-Basin trains unaugmented)
    c.model.name, c.model.width, c.model.depth = "mlp", 512, 3
    c.optimizer.name, c.optimizer.learning_rate = "adam", 1e-3
    c.batch_size = 512
    c.num_epochs = 20.0
    c.eval.methods = ("naive", "weight_matching", "activation_matching", "ste")
    return c
