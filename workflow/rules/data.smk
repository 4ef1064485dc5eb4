if not CIFAR10_ROOT:  # with dataset.root, CIFAR-10 is read from there: no download

    rule download_cifar10:
        localrule: True  # needs the network, which cluster compute nodes often lack
        output:
            out=directory("resources/raw/cifar10/cifar-10-batches-py"),
        log:
            f"{LOGS}/download_cifar10.log",
        conda:
            "../envs/onepixel.yaml"
        script:
            STAGE_SCRIPT


rule prepare_data:
    localrule: True  # seconds of I/O: runs on the submitting machine under a cluster executor
    input:
        raw=prepare_inputs,
    output:
        train=dataset_file("train"),
        test=dataset_file("test"),
    params:
        settings=stage_settings("prepare_data"),
    log:
        f"{LOGS}/prepare_data.log",
    conda:
        "../envs/onepixel.yaml"
    script:
        STAGE_SCRIPT
