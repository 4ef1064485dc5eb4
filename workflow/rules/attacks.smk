# The study's further attacks (config `attacks`: name -> the attack keys it changes) run the
# same chain as the main attack, on the main attack's selection of images: attack shards,
# merge, capture, propagation, and locality for pixel attacks; their files go under
# attack/<name>/, cubes/<name>/, propagation/<name>/ and locality/<name>/. Each rule is the
# main attack's rule with the attack's own paths and settings: the job runs its stage with the
# attack as the config's attack section (onepixel.config.with_attack, via the attack_name
# wildcard). `comparison` puts every attack side by side.


if FURTHER_ATTACKS:

    use rule attack as further_attack with:
        input:
            checkpoint=rules.train.output.checkpoint,
            test=dataset_file("test"),
            selection=rules.select_images.output.out,
        output:
            out=f"{RESULTS}/attack/{{attack_name}}/{{model}}/shard_{{shard}}-of-{SHARDS}.nc",
        params:
            settings=attack_settings("attack"),
            stage="attack",
        log:
            f"{LOGS}/attack_{{attack_name}}_{{model}}_shard_{{shard}}-of-{SHARDS}.log",
        benchmark:
            f"{LOGS}/benchmarks/attack_{{attack_name}}_{{model}}_shard_{{shard}}-of-{SHARDS}.tsv"

    use rule merge_attack as further_merge_attack with:
        input:
            shards=expand(
                f"{RESULTS}/attack/{{{{attack_name}}}}/{{{{model}}}}/shard_{{shard}}-of-{SHARDS}.nc",
                shard=range(SHARDS),
            ),
            selection=rules.select_images.output.out,
        output:
            out=f"{RESULTS}/attack/{{attack_name}}/{{model}}.nc",
        params:
            stage="merge_attack",
        log:
            f"{LOGS}/attack_{{attack_name}}_{{model}}.log",

    use rule capture as further_capture with:
        input:
            checkpoint=rules.train.output.checkpoint,
            test=dataset_file("test"),
            attack=rules.further_merge_attack.output.out,
        output:
            out=directory(f"{RESULTS}/cubes/{{attack_name}}/{{model}}"),
        params:
            settings=attack_settings("capture"),
            stage="capture",
        log:
            f"{LOGS}/capture_{{attack_name}}_{{model}}.log",
        benchmark:
            f"{LOGS}/benchmarks/capture_{{attack_name}}_{{model}}.tsv"

    use rule propagation as further_propagation with:
        input:
            cubes=rules.further_capture.output.out,
        output:
            out=f"{RESULTS}/propagation/{{attack_name}}/{{model}}.nc",
        params:
            settings=attack_settings("propagation"),
            stage="propagation",
        log:
            f"{LOGS}/propagation_{{attack_name}}_{{model}}.log",

    use rule locality as further_locality with:
        input:
            checkpoint=rules.train.output.checkpoint,
            test=dataset_file("test"),
            attack=rules.further_merge_attack.output.out,
        output:
            out=f"{RESULTS}/locality/{{attack_name}}/{{model}}.nc",
        params:
            settings=attack_settings("locality"),
            stage="locality",
        log:
            f"{LOGS}/locality_{{attack_name}}_{{model}}.log",
        benchmark:
            f"{LOGS}/benchmarks/locality_{{attack_name}}_{{model}}.tsv"

    rule comparison:
        localrule: True  # tables and figures from the attack and propagation files
        input:
            attack=each_attack("attack", "{model}.nc"),
            propagation=each_attack("propagation", "{model}.nc"),
            test=dataset_file("test"),
        output:
            out=f"{RESULTS}/plots/comparison.json",
            table=report(
                f"{RESULTS}/plots/comparison.html",
                caption="../report/comparison_table.rst",
                category="Attacks compared",
            ),
            csv=f"{RESULTS}/plots/pm_statistics.csv",
            figure=report(
                f"{RESULTS}/figures/comparison/pm_comparison.png",
                caption="../report/pm_comparison.rst",
                category="Attacks compared",
            ),
            average=[
                report(
                    f"{RESULTS}/figures/comparison/{model}/average_pm_by_attack.png",
                    caption="../report/average_pm_by_attack.rst",
                    category="Attacks compared",
                    subcategory=model,
                )
                for model in MODELS
            ],
        params:
            settings=stage_settings("comparison"),
            figures=lambda wildcards, output: os.path.dirname(output.figure),
        log:
            f"{LOGS}/comparison.log",
        conda:
            "../envs/onepixel.yaml"
        script:
            STAGE_SCRIPT
