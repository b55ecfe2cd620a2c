"""The tutorial's my_dataset.py: `MyDataSet` (with its `collate_fn`) keeps working here. The code lives in the
package, in effnet/data/dataset.py, with the training and evaluation transforms and the epoch sampler."""
from effnet.data.dataset import EpochSampler, EvalTransform, MyDataSet, TrainTransform

__all__ = ["EpochSampler", "EvalTransform", "MyDataSet", "TrainTransform"]
