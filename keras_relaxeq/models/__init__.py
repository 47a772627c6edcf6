"""Architectures built from keras_relaxeq layers."""

from keras_relaxeq.models.vn_classifier import vn_classifier
from keras_relaxeq.models.vn_dgcnn import vn_dgcnn
from keras_relaxeq.models.vn_pointnet import VNConcatGlobal, vn_pointnet
from keras_relaxeq.models.segnn import segnn
