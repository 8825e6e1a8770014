# A data-parallel run is one job that starts its processes itself, one per GPU of its node.
TRAIN_COMMAND = ("python -m rckd train" if PROCESSES == 1 else
                 f"python -m torch.distributed.run --standalone --nproc_per_node {PROCESSES} -m rckd train")


# Teachers, vanilla students and distilled students are all one rule: a run is a directory.
rule train:
    input:
        unpack(train_inputs),
    output:
        model=f"{RESULTS}/runs/{{run}}/model.pt",
        best=f"{RESULTS}/runs/{{run}}/best.pt",
        history=f"{RESULTS}/runs/{{run}}/history.csv",
        metrics=f"{RESULTS}/runs/{{run}}/metrics.json",
        spec=f"{RESULTS}/runs/{{run}}/spec.json",
    params:
        args=lambda wildcards: train_args(config, RUNS[wildcards.run]),
        out=lambda wildcards: RUNS[wildcards.run].dir,
        # torch threads per process: the job's cores are shared by its data-parallel processes
        threads=lambda wildcards, threads: max(1, threads // PROCESSES),
    wildcard_constraints:
        run=TRAINED_RUN_PATTERN,
    log:
        f"{LOGS}/train/{{run}}.log",
    benchmark:
        f"{LOGS}/benchmark/train/{{run}}.tsv"
    conda:
        "../../envs/rckd.yaml"
    threads: config["train"]["threads"]
    priority: teacher_priority
    resources:
        mem_mb=config["train"]["mem_mb"],
        runtime=config["train"]["runtime"],
        gpu=PROCESSES if ON_GPU else 0,
        nodes=1,  # torchrun --standalone: a run's processes share one node
    shell:
        f"{TRAIN_COMMAND} {{params.args}} --threads {{params.threads}} --out {{params.out}} > {{log}} 2>&1"


# Published teachers (config teachers.source) are imported, not trained; `rckd evaluate` then
# measures them like any run.
rule import_teacher:
    input:
        unpack(import_inputs),
    output:
        model=f"{RESULTS}/runs/{{arch}}/none/ce/{TEACHER_SOURCE}/seed{{seed}}/model.pt",
        metrics=f"{RESULTS}/runs/{{arch}}/none/ce/{TEACHER_SOURCE}/seed{{seed}}/metrics.json",
    wildcard_constraints:
        arch="|".join(PLAN.imports) or "no-imports",
    params:
        source=TEACHER_SOURCE,
        args=lambda wildcards, input: import_args(config, getattr(input, "archive", None)),
    log:
        f"{LOGS}/import_teacher/{{arch}}-seed{{seed}}.log",
    benchmark:
        f"{LOGS}/benchmark/import_teacher/{{arch}}-seed{{seed}}.tsv"
    conda:
        "../../envs/rckd.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    shell:
        "python -m rckd import-teacher --source {params.source} --arch {wildcards.arch} {params.args} "
        "--out {output.model} --metrics {output.metrics} > {log} 2>&1"


# A teacher's logits under every augmentation view, shared by all its students (train.teacher_bank).
rule teacher_bank:
    input:
        teacher=f"{RESULTS}/runs/{{run}}/model.pt",
        data=DATA_CACHE,
    output:
        f"{RESULTS}/runs/{{run}}/bank.pt",
    params:
        dataset=PLAN.dataset,
        root=lambda wildcards, input: os.path.dirname(input.data),
        options=data_options_args(config),
        device=config["train"]["device"],
        slots=config["train"]["jobs_per_gpu"] if ON_GPU else 0,
    log:
        f"{LOGS}/teacher_bank/{{run}}.log",
    benchmark:
        f"{LOGS}/benchmark/teacher_bank/{{run}}.tsv"
    conda:
        "../../envs/rckd.yaml"
    threads: config["train"]["threads"]
    priority: teacher_priority
    resources:
        mem_mb=config["train"]["mem_mb"],
        runtime=config["train"]["runtime"],
        gpu=1 if ON_GPU else 0,
    shell:
        "python -m rckd bank --teacher {input.teacher} --dataset {params.dataset} --data-root {params.root} {params.options} "
        "--device {params.device} --gpu-slots {params.slots} --threads {threads} --out {output} > {log} 2>&1"
