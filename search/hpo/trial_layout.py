"""What a trial writes and reports, named without importing Ray: the stages and the report read these."""

CHECKPOINT_FILE = "checkpoint.pt"
PLACEMENT = ("node_id", "cpus", "gpu_share", "started_at")  # what limit_resources reports with every epoch
DIVERGED_FILE = "diverged.json"
