"""Secure neural-network inference: import a model, save and load it, classify with it.

    import nn
    model, report = nn.from_torch(module, input_shape)   # needs torch
    nn.save("model.npz", model, features={...})          # no pickle
    model = nn.load("model.npz").model                   # no torch
    result = nn.classify(model, features, scheme="replicated")
"""

from nn.importer import from_torch
from nn.inference import classify
from nn.modelfile import ModelFile, load, save

__all__ = ["ModelFile", "classify", "from_torch", "load", "save"]
