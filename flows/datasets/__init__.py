"""Numpy-level datasets: 2-D toys, synthetic targets with known density, tables, files, splits, UCI/MAF."""

from flows.datasets.conditional import ConditionalMixture
from flows.datasets.files import (
    SUPPORTED_FORMATS,
    as_array,
    load_table,
    load_tables,
    table_columns,
    validate_table,
)
from flows.datasets.splits import train_val_test_split
from flows.datasets.synthetic import (
    SYNTHETIC_TARGETS,
    GaussianMixture,
    MultivariateStudentT,
    SyntheticTarget,
    make_synthetic_target,
    random_covariance,
)
from flows.datasets.tables import DISCRETE_SKLEARN_TABLES, SKLEARN_TABLES, load_sklearn_table
from flows.datasets.toys import TOY_ENTROPY, TOY_NAMES, toy_sample
from flows.datasets.uci import UCI_FILES, UCI_NAMES, UCI_SPLIT_SIZES, load_uci

SYNTHETIC_TARGETS["conditional_mixture"] = ConditionalMixture

__all__ = [
    "DISCRETE_SKLEARN_TABLES",
    "SKLEARN_TABLES",
    "SUPPORTED_FORMATS",
    "SYNTHETIC_TARGETS",
    "TOY_ENTROPY",
    "TOY_NAMES",
    "UCI_FILES",
    "UCI_NAMES",
    "UCI_SPLIT_SIZES",
    "ConditionalMixture",
    "GaussianMixture",
    "MultivariateStudentT",
    "SyntheticTarget",
    "as_array",
    "load_sklearn_table",
    "load_table",
    "load_tables",
    "load_uci",
    "make_synthetic_target",
    "random_covariance",
    "table_columns",
    "toy_sample",
    "train_val_test_split",
    "validate_table",
]
