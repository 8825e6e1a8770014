rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        f"{RESULTS}/runs/{{run}}/eval.json",
    params:
        teacher=lambda wildcards, input: f"--teacher {input.teacher}" if "teacher" in input.keys() else "",
        best=lambda wildcards, input: f"--best {input.best}" if "best" in input.keys() else "",
        root=lambda wildcards, input: os.path.dirname(input.data),
        batch_size=config["evaluate"]["batch_size"],
        device=config["evaluate"]["device"],
        options=data_options_args(config),
        slots=config["train"]["jobs_per_gpu"] if EVAL_ON_GPU else 0,
        workers=config["train"]["workers"],
    log:
        f"{LOGS}/evaluate/{{run}}.log",
    benchmark:
        f"{LOGS}/benchmark/evaluate/{{run}}.tsv"
    conda:
        "../../envs/rckd.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
        gpu=1 if EVAL_ON_GPU else 0,
    shell:
        "python -m rckd evaluate --model {input.model} {params.best} {params.teacher} --data-root {params.root} "
        "--batch-size {params.batch_size} --device {params.device} --gpu-slots {params.slots} {params.options} "
        "--threads {threads} --workers {params.workers} "
        "--out {output} > {log} 2>&1"
