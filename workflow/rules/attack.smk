# One path for every attack.shards = n (n = 1 included): select_images picks the images
# once, n `attack` jobs (one GPU each) attack disjoint shards of them, and merge_attack
# combines the shard files into attack/{model}.nc. Shard files are written atomically
# (temporary name, renamed when complete): an interrupted run resumes with the missing
# shards only. The results do not depend on n.


rule select_images:
    input:
        checkpoint=rules.train.output.checkpoint,
        test=dataset_file("test"),
    output:
        out=f"{RESULTS}/attack/{{model}}/selection.json",
    params:
        settings=stage_settings("select_images"),
    log:
        f"{LOGS}/attack_{{model}}_selection.log",
    threads: config["threads"]
    resources:
        gpu=1,
    conda:
        "../envs/onepixel.yaml"
    script:
        STAGE_SCRIPT


rule attack:
    input:
        checkpoint=rules.train.output.checkpoint,
        test=dataset_file("test"),
        selection=rules.select_images.output.out,
    output:
        out=f"{RESULTS}/attack/{{model}}/shard_{{shard}}-of-{SHARDS}.nc",
    params:
        settings=stage_settings("attack"),
    log:
        f"{LOGS}/attack_{{model}}_shard_{{shard}}-of-{SHARDS}.log",
    benchmark:
        f"{LOGS}/benchmarks/attack_{{model}}_shard_{{shard}}-of-{SHARDS}.tsv"
    threads: config["threads"]
    resources:
        gpu=1,
    conda:
        "../envs/onepixel.yaml"
    script:
        STAGE_SCRIPT


rule merge_attack:
    localrule: True  # the merge of the shard files is small
    input:
        shards=expand(f"{RESULTS}/attack/{{{{model}}}}/shard_{{shard}}-of-{SHARDS}.nc", shard=range(SHARDS)),
        selection=rules.select_images.output.out,
    output:
        out=f"{RESULTS}/attack/{{model}}.nc",
    log:
        f"{LOGS}/attack_{{model}}.log",
    conda:
        "../envs/onepixel.yaml"
    script:
        STAGE_SCRIPT
