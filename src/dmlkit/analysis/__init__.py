"""Why mutual learning works: the measurements of the paper's Sec. 4.5 for your own cohorts.

Zhang et al. (CVPR 2018) explain DML's gain with three measurements, all available here for any
finished run directory:

* :mod:`~dmlkit.analysis.curves` -- training-loss curves from the run's log (DML does not fit
  the training data better; it generalises better);
* :mod:`~dmlkit.analysis.minima` -- the wide-minima probe: Gaussian noise on every weight and the
  rise of the training loss it causes;
* :mod:`~dmlkit.analysis.entropy` -- the mean entropy of each peer's posterior;
* :mod:`~dmlkit.analysis.agreement` -- how often peers predict the same class and how far apart
  their posteriors are (pairwise KL).

:mod:`~dmlkit.analysis.analyze` runs them over run directories and writes CSV + PNG
(``dml analyze``: :mod:`~dmlkit.analysis.measure` for one run, :mod:`~dmlkit.analysis.tables`
and :mod:`~dmlkit.analysis.outputs` for the files); :mod:`~dmlkit.analysis.report` gathers an
experiment into one Markdown page (``dml report``: :mod:`~dmlkit.analysis.sections`,
:mod:`~dmlkit.analysis.claims`, :mod:`~dmlkit.analysis.provenance`). Both find and read runs
with :mod:`~dmlkit.analysis.runs` and format numbers with :mod:`~dmlkit.analysis.stats`.
"""

from dmlkit.analysis.agreement import agreement
from dmlkit.analysis.entropy import entropy, entropy_of_probs
from dmlkit.analysis.minima import NoiseProbe, noise_probe, perturb_, training_loss

__all__ = [
    "NoiseProbe",
    "agreement",
    "entropy",
    "entropy_of_probs",
    "noise_probe",
    "perturb_",
    "training_loss",
]
