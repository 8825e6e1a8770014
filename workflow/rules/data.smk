rule prepare_data:
    output:
        DATA_CACHE,
    params:
        dataset=PLAN.dataset,
        download="--download" if config["data"]["download"] else "",
        options=data_options_args(config),
        root=lambda wildcards, output: os.path.dirname(output[0]),
    log:
        f"{LOGS}/prepare.log",
    benchmark:
        f"{LOGS}/benchmark/prepare.tsv"
    conda:
        "../../envs/rckd.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m rckd prepare --dataset {params.dataset} --data-root {params.root} {params.download} {params.options} > {log} 2>&1"
