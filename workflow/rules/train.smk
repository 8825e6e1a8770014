# Teachers, vanilla students and distilled students are all one rule: a run is a directory.
rule train:
    input:
        unpack(train_inputs),
    output:
        model=f"{RESULTS}/runs/{{run}}/model.pt",
        history=f"{RESULTS}/runs/{{run}}/history.csv",
        metrics=f"{RESULTS}/runs/{{run}}/metrics.json",
    params:
        args=train_args,
        out=lambda wildcards: RUNS[wildcards.run].dir,
    log:
        f"{LOGS}/train/{{run}}.log",
    benchmark:
        f"{LOGS}/benchmark/train/{{run}}.tsv"
    conda:
        "../../envs/rckd.yaml"
    threads: config["train"]["threads"]
    resources:
        mem_mb=config["train"]["mem_mb"],
        runtime=config["train"]["runtime"],
        gpu=1 if ON_GPU else 0,
    shell:
        "python -m rckd train {params.args} --threads {threads} --out {params.out} > {log} 2>&1"
