"""medmix: MedMIX (modality-internal expert fusion) as an embed-once, train-many pipeline."""

__version__ = "0.1.0"
