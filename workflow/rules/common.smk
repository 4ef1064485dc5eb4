import re

from onepixel.data.cifar10_layout import cifar10_root_files
from onepixel.config import FOLDER_DATASETS, MAIN_ATTACK, PIXEL_METHODS, attack_names, with_attack
from onepixel.data.folder_layout import image_folder_files
from onepixel.stages import settings
from onepixel.study import layout as study_layout

DATASET = config["dataset"]["name"]
MODELS = config["models"]
SHARDS = config["attack"]["shards"]
# the study's further attacks (config `attacks`), in config order: rules/attacks.smk
FURTHER_ATTACKS = list(config["attacks"])
PIXEL_ATTACKS = [name for name in FURTHER_ATTACKS if with_attack(config, name)["attack"]["method"] in PIXEL_METHODS]
# Everything the study makes lives under results/<dataset>[-<study>]/ (onepixel.study):
# its prepared dataset, models, results, figures, report, logs and benchmarks.
STUDY = study_layout(config)
RESULTS = STUDY.root
LOGS = STUDY.logs
STAGE_SCRIPT = "../scripts/stage.py"  # one script runs every rule's stage (onepixel.stages)


wildcard_constraints:
    model="|".join(re.escape(model) for model in MODELS),
    shard="[0-9]+",
    attack_name="|".join(re.escape(name) for name in FURTHER_ATTACKS) or "(?!)",


def dataset_file(split):
    return STUDY.dataset_file(split)


def stage_settings(stage):
    """The config values the stage reads: as a rule's params, a changed one reruns the rule."""
    return settings(stage, config)


def attack_settings(stage):
    """The params of the further attacks (rules/attacks.smk), as the settings of ``stage`` under that attack."""
    return lambda wildcards: settings(stage, with_attack(config, wildcards.attack_name))


def each_model(pattern):
    """An input function: ``pattern`` (with {results} and {model}) for every model, in config order."""
    return lambda wildcards: [pattern.format(results=RESULTS, model=model) for model in MODELS]


def each_attack(folder, pattern):
    """The files ``{folder}/[<attack>/]<pattern>`` of every attack of the study (main first) and model, in
    the order of the comparison stage's ``per_attack`` ports (onepixel.workflow.job)."""
    return [
        f"{RESULTS}/{folder}/" + ("" if name == MAIN_ATTACK else f"{name}/") + pattern.format(model=model)
        for name in attack_names(config)
        for model in MODELS
    ]


def all_targets():
    compared = [f"{RESULTS}/plots/comparison.json"] if FURTHER_ATTACKS else []
    localities = [f"{RESULTS}/locality/{name}/{model}.nc" for name in PIXEL_ATTACKS for model in MODELS]
    return [
        *compared,
        *localities,
        f"{RESULTS}/summary.json",
        f"{RESULTS}/figures/locality.png",
        f"{RESULTS}/figures/receptive_fields.png",
        f"{RESULTS}/figures/locality_table.html",
        f"{RESULTS}/figures/pm_depth.png",
        *[f"{RESULTS}/figures/{model}/average_pm.png" for model in MODELS],
    ]


# dataset.root: a pre-staged CIFAR-10 copy (no download). Its files are the inputs of
# prepare_data, so a changed or other copy reruns the study. Checked by validate_config.
CIFAR10_ROOT = config["dataset"]["root"] if DATASET == "cifar10" else ""
CIFAR10_ROOT_FILES = [str(path) for path in cifar10_root_files(CIFAR10_ROOT)] if CIFAR10_ROOT else []


def prepare_inputs(wildcards):
    """The files a dataset is made from: the pre-staged CIFAR-10 copy (dataset.root) or
    the verified download, or an image folder's files (the digits ship with scikit-learn)."""
    if DATASET == "cifar10":
        return CIFAR10_ROOT_FILES or "resources/raw/cifar10/cifar-10-batches-py"
    if DATASET in FOLDER_DATASETS:
        return image_folder_files(config["dataset"])
    return []


def user_checkpoint(wildcards):
    """The user's own checkpoint for this model, if config train.checkpoints names one."""
    path = config["train"]["checkpoints"].get(wildcards.model)
    return [path] if path else []


def model_source_files(wildcards):
    """The files of this model's model_sources entry (its state_dict, its .pt2 program), if any."""
    source = config["model_sources"].get(wildcards.model, {})
    return [source[key] for key in ("state_dict", "program") if key in source]
