# The model image: only the detector's checkpoint, copied into the pod by the detector's init
# container (deploy/k8s/base/detector.yaml). Tag it with the model's version; the k8s overlays'
# `images:` block picks it. Build context: the folder holding stfpm.safetensors.
#
#   docker build -f deploy/docker/model.Dockerfile -t registry.example.com/linewatch/linewatch-model:stfpm-1 models/
FROM busybox:1.37.0
COPY stfpm.safetensors /model/stfpm.safetensors
USER 10001:10001
