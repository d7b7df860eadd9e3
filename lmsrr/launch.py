"""One run of a comparison, in a process of its own: ``python -m lmsrr.launch RUN.json``.

Every launcher but ``inline`` ends here: the local launcher starts this module as a child
process, a SLURM job (through submitit) calls :class:`SlurmRun`, a Ray task starts this module
as its child. The run resumes from its newest checkpoint when it has one (the configuration
says ``--resume auto``), and leaves ``launch_status.json`` in its run directory:
``{"status": "complete" | "diverged" | "interrupted" | "error", "message": ...}``, which the
comparison reads when the process is gone.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import traceback

from lmsrr import distributed
from lmsrr.config import Config
from lmsrr.engine import Interrupted, Trainer
from lmsrr.errors import UserError
from lmsrr.guard import NonFiniteError

log = logging.getLogger("lmsrr.launch")

STATUS_FILE = "launch_status.json"
CONFIG_FILE = "launch_config.json"
LOG_FILE = "launch.log"


def run_dir_of(cfg: Config) -> str:
    return os.path.join(cfg.log.out_dir, cfg.log.run_name)


def read_status(run_dir: str) -> dict | None:
    try:
        with open(os.path.join(run_dir, STATUS_FILE)) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _write_status(run_dir: str, status: dict) -> None:
    os.makedirs(run_dir, exist_ok=True)
    tmp = os.path.join(run_dir, STATUS_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(status, f)
    os.replace(tmp, os.path.join(run_dir, STATUS_FILE))


def execute(config_path: str) -> dict:
    """Train the configuration in ``config_path`` to its end (or its first stop) and return, and
    record, how it ended. Never raises for a run that fails: the comparison goes on."""
    try:
        with open(config_path) as f:
            cfg = Config.from_dict(json.load(f))
    except (OSError, json.JSONDecodeError, UserError) as e:
        return {"status": "error", "message": f"cannot load {config_path}: {e}"}
    run_dir = run_dir_of(cfg)
    try:
        os.remove(os.path.join(run_dir, STATUS_FILE))  # a previous attempt's outcome is stale now
    except OSError:
        pass
    try:
        trainer = Trainer(cfg)
        results = trainer.fit()
        status = {"status": "complete", "message": "",
                  "class_il": results["summary_class_il"]["avg_acc"]}
    except NonFiniteError as e:
        status = {"status": "diverged", "message": str(e)}
    except Interrupted as e:
        status = {"status": "interrupted", "message": str(e), "signal": e.signum}
    except UserError as e:
        status = {"status": "error", "message": str(e)}
    except Exception as e:  # the traceback goes to the run's log; the comparison goes on
        traceback.print_exc()
        status = {"status": "error", "message": f"{type(e).__name__}: {e}"}
    finally:
        distributed.cleanup()
    if int(os.environ.get("RANK", "0")) == 0:  # under DDP (torchrun, submitit) rank 0 records
        _write_status(run_dir, status)
    return status


def child_command(config_path: str, nproc: int = 1) -> list[str]:
    """The command that runs one configuration; several GPUs per run: torchrun on one node."""
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                "-m", "lmsrr.launch", config_path]
    return [sys.executable, "-m", "lmsrr.launch", config_path]


def child_env(extra: dict | None = None) -> dict:
    """The environment of a child run: this package importable even from an uninstalled checkout."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def run_in_subprocess(config_path: str, log_path: str, nproc: int = 1, env: dict | None = None) -> dict:
    """Run one configuration as a child process (output to ``log_path``) and return its status.
    The Ray launcher's task body; the local launcher does the same without waiting."""
    with open(log_path, "ab") as logf:
        code = subprocess.call(child_command(config_path, nproc), stdout=logf, stderr=subprocess.STDOUT,
                               env=child_env(env))
    return outcome(config_path, code, log_path)


def outcome(config_path: str, code: int, log_path: str) -> dict:
    """A finished child's status: what it recorded, or its exit status when it could not record."""
    run_dir = os.path.dirname(config_path)
    status = read_status(run_dir)
    if status is None:
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        status = {"status": "error", "message": f"the run ended without a status ({how})"}
    status["log"] = log_path
    return status


class SlurmRun:
    """The callable each SLURM array task runs (pickled by submitit). With several tasks per job
    (``--gpus-per-run`` > 1) each is one DDP rank: submitit's environment becomes the variables
    torchrun would set, and the trainer joins the process group as under torchrun."""

    def __call__(self, config_path: str) -> dict:
        import submitit  # optional dependency (lmsrr[slurm]); present wherever this job runs

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            # Each task keeps every GPU of its node visible and picks cuda:LOCAL_RANK, as under torchrun.
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")
        return execute(config_path)

    def checkpoint(self, config_path: str):
        """Called by submitit when the job is preempted or reaches its time limit: requeue the
        same run; it resumes from its newest checkpoint (``--resume auto``)."""
        import submitit  # optional dependency, as above

        return submitit.helpers.DelayedSubmission(SlurmRun(), config_path)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m lmsrr.launch RUN_CONFIG.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    status = execute(argv[0])
    if status["status"] != "complete":
        print(f"lmsrr.launch: {status['status']}: {status['message']}", file=sys.stderr)
    if status["status"] == "interrupted":
        return 128 + status["signal"]
    return 0 if status["status"] == "complete" else 1


if __name__ == "__main__":
    sys.exit(main())
