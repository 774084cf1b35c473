"""fastai callbacks that save the best model of a run and log it to W&B with its own epoch's metrics

Modules:

- `fastai_bestmodel.test_utils`: What the tests and the examples train on: a metric whose values are scripted in advance, copies of the weights of each epoch, and a small real dataset that ships with scikit-learn."""

__version__ = "0.0.1"
