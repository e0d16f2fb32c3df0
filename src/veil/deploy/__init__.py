"""Deployment: Kubernetes manifests for veil's three scenarios and the NetApp DataOps Toolkit mapping.

``veil.deploy.k8s`` builds manifests as plain dicts (rendered to YAML by the ``veil k8s render``
command); ``veil.deploy.dataops`` maps veil's options onto the DataOps Toolkit for Kubernetes, which
is optional and imported only when a call is really made.
"""
