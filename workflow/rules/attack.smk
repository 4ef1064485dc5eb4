# attack.shards == 1: one job per model selects the images, attacks them and writes
# attack/{model}.nc. attack.shards == n > 1: attack_select picks the images once,
# n attack_shard jobs (one GPU each) attack disjoint parts of them, and rule
# `attack` merges the shard files into the same attack/{model}.nc (so the rule
# that makes the result is called `attack` either way; rules `attack` (unsharded)
# and `attack_shard` share scripts/attack.py). Shard files are written atomically
# (temporary name, renamed when complete): an interrupted run resumes with the
# missing shards only.
SHARDS = config["attack"]["shards"]

if SHARDS == 1:

    rule attack:
        input:
            checkpoint=rules.train.output.checkpoint,
            test=dataset_file("test"),
        output:
            f"{RESULTS}/attack/{{model}}.nc",
        params:
            settings=config["attack"],  # a changed setting reruns the rule (Snakemake's params trigger)
            device=config["device"],
        log:
            f"logs/{DATASET}/attack_{{model}}.log",
        threads: config["threads"]
        resources:
            gpu=1,
        conda:
            "../envs/onepixel.yaml"
        script:
            "../scripts/attack.py"

else:

    rule attack_select:
        input:
            checkpoint=rules.train.output.checkpoint,
            test=dataset_file("test"),
        output:
            f"{RESULTS}/attack/{{model}}/selection.json",
        params:
            settings=config["attack"],
            device=config["device"],
        log:
            f"logs/{DATASET}/attack_{{model}}_selection.log",
        threads: config["threads"]
        resources:
            gpu=1,
        conda:
            "../envs/onepixel.yaml"
        script:
            "../scripts/attack_select.py"

    rule attack_shard:
        input:
            checkpoint=rules.train.output.checkpoint,
            test=dataset_file("test"),
            selection=rules.attack_select.output[0],
        output:
            f"{RESULTS}/attack/{{model}}/shard_{{shard}}-of-{SHARDS}.nc",
        params:
            settings=config["attack"],
            device=config["device"],
        log:
            f"logs/{DATASET}/attack_{{model}}_shard_{{shard}}-of-{SHARDS}.log",
        wildcard_constraints:
            shard="[0-9]+",
        threads: config["threads"]
        resources:
            gpu=1,
        conda:
            "../envs/onepixel.yaml"
        script:
            "../scripts/attack.py"

    rule attack:
        localrule: True  # the merge of the shard files is small
        input:
            shards=expand(
                f"{RESULTS}/attack/{{{{model}}}}/shard_{{shard}}-of-{SHARDS}.nc",
                shard=range(SHARDS),
            ),
            selection=rules.attack_select.output[0],
        output:
            f"{RESULTS}/attack/{{model}}.nc",
        log:
            f"logs/{DATASET}/attack_{{model}}.log",
        conda:
            "../envs/onepixel.yaml"
        script:
            "../scripts/attack_merge.py"
