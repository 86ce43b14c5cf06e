"""The one setting every component's base image comes from."""

import os

# The project image (Dockerfile, target `gpu` or `cpu`); kfp.local's SubprocessRunner ignores it.
IMAGE = os.environ.get("EXPO_IMAGE", "ghcr.io/expo-pipeline/expo:0.1.0")
