"""What fine-tuning bought, on the user's own data: `tunesmith compare`.

On the same splits and budget, the pre-trained model as it is, a probe on the frozen backbone,
the configured fine-tune, the same architecture from random initialization and, optionally,
probe-then-fine-tune (`arms.py`), each a `tunesmith.finetune` run in its own folder under
`<output_dir>/compare/`; optionally a learning curve over stratified, nested fractions of the
training rows with repeated seeds (`learning_curve.py`); and the table, plots and an HTML page
that sum it up (`summary.py`). `compare.py` runs it all.
"""

from tunesmith.comparison.compare import CompareResult, compare

__all__ = ["CompareResult", "compare"]
