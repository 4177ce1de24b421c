"""Weights people already have: Hugging Face checkpoint directories (``config.json``,
safetensors, ``tokenizer.json`` or Marian's SentencePiece files) read and written without
pickle, and GGUF files.

The models load them with ``from_pretrained(path)`` and write them with ``save_pretrained``
(:class:`~tfm_rs.models.BertEncoder`, :class:`~tfm_rs.models.GPT`, :class:`~tfm_rs.models.Llama`,
:class:`~tfm_rs.models.Seq2SeqTransformer` as Marian); this package holds the file
formats and each family's name mapping (one module per family), and never imports the models.
"""

from tfm_rs.pretrained.errors import PretrainedFormatError, UnsupportedConfigError, WeightsMismatchError
from tfm_rs.pretrained.hf import load_tokenizer, read_config
from tfm_rs.pretrained.marian_tokenizer import MarianTokenizer
from tfm_rs.pretrained.safetensors_io import SafetensorsFile, read_safetensors, write_safetensors

__all__ = ["MarianTokenizer", "PretrainedFormatError", "SafetensorsFile", "UnsupportedConfigError",
           "WeightsMismatchError", "load_tokenizer", "read_config", "read_safetensors", "write_safetensors"]
