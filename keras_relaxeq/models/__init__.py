"""Architectures built from keras_relaxeq layers."""

from keras_relaxeq.models.segnn import segnn
from keras_relaxeq.models.torch_port import vn_pointnet_from_torch_state_dict
from keras_relaxeq.models.vn_classifier import vn_classifier
from keras_relaxeq.models.vn_dgcnn import vn_dgcnn
from keras_relaxeq.models.vn_pointnet import VNConcatGlobal, vn_pointnet

vn_pointnet.from_torch_state_dict = vn_pointnet_from_torch_state_dict  # PyTorch checkpoints of the reference
