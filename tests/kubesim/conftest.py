from tests.kubesim.fixtures import kube_api_fixture, kubeconfig_fixture, kubectl_fixture, kubesim_fixture

__all__ = ["kube_api_fixture", "kubeconfig_fixture", "kubectl_fixture", "kubesim_fixture"]
