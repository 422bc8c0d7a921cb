"""Tests of the deployment: manifests, certificates, image install steps."""
