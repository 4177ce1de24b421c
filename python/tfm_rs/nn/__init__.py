"""Neural-network layers with ``torch.nn``'s names, arguments, semantics and ``state_dict`` keys.

Modules are thin: each ``forward`` composes :mod:`tfm_rs.functional` ops, whose kernels run in
Rust. A ``state_dict`` holds float32 NumPy arrays under the keys ``torch.nn`` uses, so weights
move between the two with ``load_state_dict``.
"""

from tfm_rs import functional
from tfm_rs.nn import init
from tfm_rs.nn.additive_attention import AdditiveAttention
from tfm_rs.nn.activation import GELU, MultiheadAttention, ReLU, SiLU, Sigmoid, Tanh
from tfm_rs.nn.batch_norm import BatchNorm1d, MaskedBatchNorm1d
from tfm_rs.nn.conv import Conv1d
from tfm_rs.nn.dropout import Dropout
from tfm_rs.nn.factorized import FactorizedEmbedding
from tfm_rs.nn.hash_embedding import HashEmbedding
from tfm_rs.nn.linear import Identity, Linear
from tfm_rs.nn.low_rank import LowRankLinear
from tfm_rs.nn.module import Module, ModuleList, Sequential
from tfm_rs.nn.normalization import LayerNorm, RMSNorm
from tfm_rs.nn.norms import make_norm
from tfm_rs.nn.parameter import Parameter
from tfm_rs.nn.rnn import GRU, LSTM
from tfm_rs.nn.positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding
from tfm_rs.nn.sparse import Embedding
from tfm_rs.nn.transformer import (
    Transformer,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)
from tfm_rs.nn import utils  # noqa: E402  (after the layers: prune imports Module)

__all__ = [
    "AdditiveAttention",
    "BatchNorm1d",
    "Conv1d",
    "Dropout",
    "Embedding",
    "FactorizedEmbedding",
    "GELU",
    "SiLU",
    "GRU",
    "HashEmbedding",
    "Identity",
    "LSTM",
    "LayerNorm",
    "LearnedPositionalEmbedding",
    "Linear",
    "LowRankLinear",
    "MaskedBatchNorm1d",
    "Module",
    "ModuleList",
    "MultiheadAttention",
    "Parameter",
    "ReLU",
    "RMSNorm",
    "Sequential",
    "Sigmoid",
    "SinusoidalPositionalEncoding",
    "Tanh",
    "Transformer",
    "TransformerDecoder",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "functional",
    "init",
    "make_norm",
    "utils",
]
