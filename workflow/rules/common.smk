DATASET = config["dataset"]["name"]
MODELS = config["models"]
RESULTS = f"results/{DATASET}"


wildcard_constraints:
    dataset="[a-z0-9_]+",
    model="|".join(MODELS),


def dataset_file(split):
    return f"resources/datasets/{DATASET}/{split}.nc"


def per_model(pattern):
    return {model: pattern.format(results=RESULTS, model=model) for model in MODELS}


def all_targets():
    return [
        f"{RESULTS}/summary.json",
        f"{RESULTS}/figures/locality.png",
        f"{RESULTS}/figures/pm_depth.png",
        *per_model("{results}/figures/{model}/average_pm.png").values(),
    ]


def prepare_inputs(wildcards):
    """The verified download for datasets that need one (the digits ship with scikit-learn)."""
    if wildcards.dataset == "cifar10":
        return "resources/raw/cifar10/cifar-10-batches-py"
    return []


def user_checkpoint(wildcards):
    """The user's own checkpoint for this model, if config train.checkpoints names one."""
    path = config["train"]["checkpoints"].get(wildcards.model)
    return [path] if path else []
