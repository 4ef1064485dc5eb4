rule figures:
    input:
        test=dataset_file("test"),
        attack=per_model("{results}/attack/{model}.nc").values(),
        propagation=per_model("{results}/propagation/{model}.nc").values(),
        locality=per_model("{results}/locality/{model}.nc").values(),
    output:
        locality=report(
            f"{RESULTS}/figures/locality.png",
            caption="../report/locality.rst",
            category="Locality",
        ),
        depth=report(
            f"{RESULTS}/figures/pm_depth.png",
            caption="../report/pm_depth.rst",
            category="Propagation maps",
        ),
        average=[
            report(path, caption="../report/average_pm.rst", category="Propagation maps", subcategory=model)
            for model, path in per_model("{results}/figures/{model}/average_pm.png").items()
        ],
    params:
        models=MODELS,
        attack=per_model("{results}/attack/{model}.nc"),
        propagation=per_model("{results}/propagation/{model}.nc"),
        locality=per_model("{results}/locality/{model}.nc"),
        out_dir=lambda wildcards, output: os.path.dirname(output.locality),
    log:
        f"logs/{DATASET}/figures.log",
    conda:
        "../envs/onepixel.yaml"
    script:
        "../scripts/figures.py"


rule summary:
    input:
        metrics=per_model("{results}/metrics/{model}.json").values(),
        attack=per_model("{results}/attack/{model}.nc").values(),
        propagation=per_model("{results}/propagation/{model}.nc").values(),
        locality=per_model("{results}/locality/{model}.nc").values(),
    output:
        f"{RESULTS}/summary.json",
    params:
        metrics=per_model("{results}/metrics/{model}.json"),
        attack=per_model("{results}/attack/{model}.nc"),
        propagation=per_model("{results}/propagation/{model}.nc"),
        locality=per_model("{results}/locality/{model}.nc"),
    log:
        f"logs/{DATASET}/summary.log",
    conda:
        "../envs/onepixel.yaml"
    script:
        "../scripts/summary.py"
