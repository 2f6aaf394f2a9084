"""Built-in loggers: ``jsonl`` (the run's ``metrics.jsonl``, read by ``vantage plot``) and
``wandb`` (Weights & Biases, online or offline; the package is imported only when used)."""

from vantage_core.api import hookimpl


class JsonlLogger:
    """Append each record as one JSON line to ``<run_dir>/metrics.jsonl``."""

    def __init__(self, run_dir: str, config: dict, filename: str = "metrics.jsonl"):
        from pathlib import Path

        self.path = Path(run_dir) / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("a")

    def log(self, step: int, metrics: dict) -> None:
        import json

        self.file.write(json.dumps(metrics) + "\n")
        self.file.flush()  # a crash loses at most the line being written

    def close(self) -> None:
        self.file.close()


class WandbLogger:
    """Send each record to Weights & Biases (``mode``: online, offline, or auto: online only
    when ``WANDB_API_KEY`` is set)."""

    def __init__(self, run_dir: str, config: dict, project: str = "vantage", entity: str | None = None,
                 mode: str = "auto", name: str | None = None, tags: list[str] | None = None):
        import os

        try:
            import wandb
        except ImportError:
            from vantage_core.api import PluginError

            raise PluginError("logger 'wandb': the wandb package is not installed; "
                              "pip install 'vantage[wandb]', or remove it from train.loggers") from None
        if mode == "auto":
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        self.wandb = wandb
        self.run = wandb.init(project=project, entity=entity, mode=mode, dir=run_dir, config=config,
                              name=name or config.get("run", {}).get("name"), tags=tags,
                              reinit="finish_previous")

    def log(self, step: int, metrics: dict) -> None:
        flat = {}
        prefix = "eval/" if metrics.get("kind") == "eval" else "train/"
        for key, value in metrics.items():
            if key in ("step", "kind"):
                continue
            if key == "expert_load" and isinstance(value, list):
                for layer, shares in enumerate(value):
                    for expert, share in enumerate(shares):
                        flat[f"expert_load/layer{layer}/expert{expert}"] = share
            elif isinstance(value, (int, float)):
                flat[prefix + key] = value
        self.run.log(flat, step=step)

    def close(self) -> None:
        self.run.finish()


@hookimpl
def register_loggers(register):
    register("jsonl", JsonlLogger)
    register("wandb", WandbLogger)
