from tests.kubesim.fixtures import (
    controllers_fixture,
    kube_api_fixture,
    kubeconfig_fixture,
    kubectl_fixture,
    kubesim_fixture,
)

__all__ = ["controllers_fixture", "kube_api_fixture", "kubeconfig_fixture", "kubectl_fixture", "kubesim_fixture"]
