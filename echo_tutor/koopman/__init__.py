"""Koopman tools: the operator and spectrum held in an SKA state, and DMD from snapshots.

``A = M G^-1`` is the least-squares one-step predictor of the keys (``k_t ~ A k_{t-1}``): dynamic mode
decomposition (DMD) with ridge ``eps``, fitted on the key sequence. One difference from textbook DMD on
the pairs (k_{t-1}, k_t): SKA's ``G`` also counts the last key ``k_{T-1} k_{T-1}^T`` (it serves the ridge
readout too), a rank-1 term whose effect fades as ``1/T``. Its eigenvalues are the Koopman
spectrum. The whitened ``A_w = L^-1 M L^-T`` (``G = L L^T``) is similar to ``A`` (``A = L A_w L^-1``), so
it has the same eigenvalues. ``G^-1 M = G^-1 A G`` is similar to ``A`` too (same spectrum), but it is not
the predictor: applied to ``k_{t-1}`` it does not give ``k_t``.

Modules: ``operator`` (the operator and spectrum of an SKA state), ``dmd`` (DMD from snapshots and test
systems), ``probes`` (spectra and readout weights of trained models).
"""

from .dmd import DMDResult, damped_rotation, dmd, oscillators
from .operator import KoopmanOperator, koopman_operator, koopman_spectrum, mode_energies
from .probes import model_spectra, offset_profile, readout_weights

__all__ = [
    "readout_weights", "offset_profile",
    "KoopmanOperator", "DMDResult", "koopman_operator", "koopman_spectrum", "dmd",
    "damped_rotation", "oscillators", "model_spectra", "mode_energies",
]
