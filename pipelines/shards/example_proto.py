"""The `tf.train.Example` protocol buffer, described here so no TensorFlow is needed.

The messages are TensorFlow's (tensorflow/core/example/{example,feature}.proto): the
same package, names, field numbers and wire types, so the bytes they serialise to are what
`tf.io.parse_single_example`, TFDS and every other Example reader parse. They are built
from a descriptor at first use, in a private descriptor pool: a process that also
imports TensorFlow (whose own `tensorflow.Example` sits in the default pool) sees no
clash.
"""

from __future__ import annotations

import functools

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto


def _file() -> descriptor_pb2.FileDescriptorProto:
  proto = descriptor_pb2.FileDescriptorProto(
      name="piano_perception/example.proto", package="tensorflow", syntax="proto3")

  def message(name: str, *fields: tuple[str, int, int, str | None]):
    m = proto.message_type.add(name=name)
    for field_name, number, kind, type_name in fields:
      label = _F.LABEL_REPEATED if field_name in ("value", "feature") else _F.LABEL_OPTIONAL
      field = m.field.add(name=field_name, number=number, type=kind, label=label)
      if type_name:
        field.type_name = type_name
    return m

  # proto3 packs repeated scalars, as TensorFlow's feature.proto asks ([packed = true]).
  message("BytesList", ("value", 1, _F.TYPE_BYTES, None))
  message("FloatList", ("value", 1, _F.TYPE_FLOAT, None))
  message("Int64List", ("value", 1, _F.TYPE_INT64, None))
  feature = message("Feature",
                    ("bytes_list", 1, _F.TYPE_MESSAGE, ".tensorflow.BytesList"),
                    ("float_list", 2, _F.TYPE_MESSAGE, ".tensorflow.FloatList"),
                    ("int64_list", 3, _F.TYPE_MESSAGE, ".tensorflow.Int64List"))
  feature.oneof_decl.add(name="kind")
  for field in feature.field:
    field.oneof_index = 0
  features = message("Features",
                     ("feature", 1, _F.TYPE_MESSAGE, ".tensorflow.Features.FeatureEntry"))
  # TensorFlow declares `map<string, Feature> feature = 1`, which is on the wire exactly a
  # repeated message of key = 1, value = 2. Declared as that plain repeated message here:
  # iterating it is one C-level pass, where Python's view of a map looks every key up again
  # (a third of a window's decode time). The writer orders the entries by key, as a
  # deterministic map serialisation does, and the reader refuses a repeated key.
  entry = features.nested_type.add(name="FeatureEntry")
  entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
  entry.field.add(name="value", number=2, type=_F.TYPE_MESSAGE, label=_F.LABEL_OPTIONAL,
                  type_name=".tensorflow.Feature")
  message("Example", ("features", 1, _F.TYPE_MESSAGE, ".tensorflow.Features"))
  return proto


@functools.cache
def _pool() -> descriptor_pool.DescriptorPool:
  pool = descriptor_pool.DescriptorPool()
  pool.Add(_file())
  return pool


def example_class() -> type:
  """The `tensorflow.Example` message class (from a private descriptor pool)."""
  return message_factory.GetMessageClass(_pool().FindMessageTypeByName("tensorflow.Example"))


def feature_class() -> type:
  """The `tensorflow.Feature` message class."""
  return message_factory.GetMessageClass(_pool().FindMessageTypeByName("tensorflow.Feature"))
