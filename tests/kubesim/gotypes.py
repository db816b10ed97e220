"""The Go types the API server decodes built-in objects into, as its JSON decoder sees them.

Transcribed from k8s.io/api, k8s.io/apimachinery (`meta/v1`) and k8s.io/apiextensions-apiserver v0.32: every
struct reachable from a served kind (and from the Scale, Binding, TokenRequest, TokenReview and DeleteOptions
bodies), each field by its JSON name in declaration order, embedded (`json:",inline"`) structs' fields in their
place. Pointers are left out, as the decoder sees through them. A type is named `<package>.<Name>`, a same-package
one by its name alone; `STRING_TYPES` are the named string types (`v1.Protocol`), `NAMED_TYPES` the other
named non-struct ones. Types with their own `UnmarshalJSON` (`Time`, `IntOrString`, `Quantity`, ...) are not
here: `tests.kubesim.decoding` decodes them as their methods do.

A struct's fields are listed in the order the encoder writes them in, as `encoding/json` writes a struct
(`typeFields`): `kind` and `apiVersion` (TypeMeta's order), then `metadata`, `spec`, `status`. What it needs
besides, from the same declarations: `POINTERS`, the fields declared as pointers (no slice or map of these types
holds pointers), and `WITHOUT_OMITEMPTY`, the fields whose JSON tag lacks `omitempty`; every other field has it.
"""

from __future__ import annotations

STRUCTS: dict[str, dict[str, str]] = {
    "meta/v1": {
        "Condition": (
            "type:string status:ConditionStatus observedGeneration:int64 lastTransitionTime:Time reason:string "
            "message:string"
        ),
        "DeleteOptions": (
            "kind:string apiVersion:string gracePeriodSeconds:int64 preconditions:Preconditions "
            "orphanDependents:bool propagationPolicy:DeletionPropagation dryRun:[]string "
            "ignoreStoreReadErrorWithClusterBreakingPotential:bool"
        ),
        "LabelSelector": "matchLabels:map[string]string matchExpressions:[]LabelSelectorRequirement",
        "LabelSelectorRequirement": "key:string operator:LabelSelectorOperator values:[]string",
        "ManagedFieldsEntry": (
            "manager:string operation:ManagedFieldsOperationType apiVersion:string time:Time fieldsType:string "
            "fieldsV1:FieldsV1 subresource:string"
        ),
        "ObjectMeta": (
            "name:string generateName:string namespace:string selfLink:string uid:types.UID resourceVersion:string "
            "generation:int64 creationTimestamp:Time deletionTimestamp:Time deletionGracePeriodSeconds:int64 "
            "labels:map[string]string annotations:map[string]string ownerReferences:[]OwnerReference "
            "finalizers:[]string managedFields:[]ManagedFieldsEntry"
        ),
        "OwnerReference": (
            "apiVersion:string kind:string name:string uid:types.UID controller:bool blockOwnerDeletion:bool"
        ),
        "Preconditions": "uid:types.UID resourceVersion:string",
    },
    "core/v1": {
        "AWSElasticBlockStoreVolumeSource": "volumeID:string fsType:string partition:int32 readOnly:bool",
        "Affinity": "nodeAffinity:NodeAffinity podAffinity:PodAffinity podAntiAffinity:PodAntiAffinity",
        "AppArmorProfile": "type:AppArmorProfileType localhostProfile:string",
        "AzureDiskVolumeSource": (
            "diskName:string diskURI:string cachingMode:AzureDataDiskCachingMode fsType:string readOnly:bool "
            "kind:AzureDataDiskKind"
        ),
        "AzureFileVolumeSource": "secretName:string shareName:string readOnly:bool",
        "Binding": "kind:string apiVersion:string metadata:meta/v1.ObjectMeta target:ObjectReference",
        "CSIVolumeSource": (
            "driver:string readOnly:bool fsType:string volumeAttributes:map[string]string "
            "nodePublishSecretRef:LocalObjectReference"
        ),
        "Capabilities": "add:[]Capability drop:[]Capability",
        "CephFSVolumeSource": (
            "monitors:[]string path:string user:string secretFile:string secretRef:LocalObjectReference readOnly:bool"
        ),
        "CinderVolumeSource": "volumeID:string fsType:string readOnly:bool secretRef:LocalObjectReference",
        "ClientIPConfig": "timeoutSeconds:int32",
        "ClusterTrustBundleProjection": (
            "name:string signerName:string labelSelector:meta/v1.LabelSelector optional:bool path:string"
        ),
        "ConfigMap": (
            "kind:string apiVersion:string metadata:meta/v1.ObjectMeta immutable:bool data:map[string]string "
            "binaryData:map[string][]uint8"
        ),
        "ConfigMapEnvSource": "name:string optional:bool",
        "ConfigMapKeySelector": "name:string key:string optional:bool",
        "ConfigMapProjection": "name:string items:[]KeyToPath optional:bool",
        "ConfigMapVolumeSource": "name:string items:[]KeyToPath defaultMode:int32 optional:bool",
        "Container": (
            "name:string image:string command:[]string args:[]string workingDir:string ports:[]ContainerPort "
            "envFrom:[]EnvFromSource env:[]EnvVar resources:ResourceRequirements "
            "resizePolicy:[]ContainerResizePolicy restartPolicy:ContainerRestartPolicy volumeMounts:[]VolumeMount "
            "volumeDevices:[]VolumeDevice livenessProbe:Probe readinessProbe:Probe startupProbe:Probe "
            "lifecycle:Lifecycle terminationMessagePath:string terminationMessagePolicy:TerminationMessagePolicy "
            "imagePullPolicy:PullPolicy securityContext:SecurityContext stdin:bool stdinOnce:bool tty:bool"
        ),
        "ContainerPort": "name:string hostPort:int32 containerPort:int32 protocol:Protocol hostIP:string",
        "ContainerResizePolicy": "resourceName:ResourceName restartPolicy:ResourceResizeRestartPolicy",
        "ContainerState": (
            "waiting:ContainerStateWaiting running:ContainerStateRunning terminated:ContainerStateTerminated"
        ),
        "ContainerStateRunning": "startedAt:meta/v1.Time",
        "ContainerStateTerminated": (
            "exitCode:int32 signal:int32 reason:string message:string startedAt:meta/v1.Time "
            "finishedAt:meta/v1.Time containerID:string"
        ),
        "ContainerStateWaiting": "reason:string message:string",
        "ContainerStatus": (
            "name:string state:ContainerState lastState:ContainerState ready:bool restartCount:int32 image:string "
            "imageID:string containerID:string started:bool allocatedResources:ResourceList "
            "resources:ResourceRequirements volumeMounts:[]VolumeMountStatus user:ContainerUser "
            "allocatedResourcesStatus:[]ResourceStatus"
        ),
        "ContainerUser": "linux:LinuxContainerUser",
        "DownwardAPIProjection": "items:[]DownwardAPIVolumeFile",
        "DownwardAPIVolumeFile": (
            "path:string fieldRef:ObjectFieldSelector resourceFieldRef:ResourceFieldSelector mode:int32"
        ),
        "DownwardAPIVolumeSource": "items:[]DownwardAPIVolumeFile defaultMode:int32",
        "EmptyDirVolumeSource": "medium:StorageMedium sizeLimit:resource.Quantity",
        "EnvFromSource": "prefix:string configMapRef:ConfigMapEnvSource secretRef:SecretEnvSource",
        "EnvVar": "name:string value:string valueFrom:EnvVarSource",
        "EnvVarSource": (
            "fieldRef:ObjectFieldSelector resourceFieldRef:ResourceFieldSelector "
            "configMapKeyRef:ConfigMapKeySelector secretKeyRef:SecretKeySelector"
        ),
        "EphemeralContainer": (
            "name:string image:string command:[]string args:[]string workingDir:string ports:[]ContainerPort "
            "envFrom:[]EnvFromSource env:[]EnvVar resources:ResourceRequirements "
            "resizePolicy:[]ContainerResizePolicy restartPolicy:ContainerRestartPolicy volumeMounts:[]VolumeMount "
            "volumeDevices:[]VolumeDevice livenessProbe:Probe readinessProbe:Probe startupProbe:Probe "
            "lifecycle:Lifecycle terminationMessagePath:string terminationMessagePolicy:TerminationMessagePolicy "
            "imagePullPolicy:PullPolicy securityContext:SecurityContext stdin:bool stdinOnce:bool tty:bool "
            "targetContainerName:string"
        ),
        "EphemeralVolumeSource": "volumeClaimTemplate:PersistentVolumeClaimTemplate",
        "ExecAction": "command:[]string",
        "FCVolumeSource": "targetWWNs:[]string lun:int32 fsType:string readOnly:bool wwids:[]string",
        "FlexVolumeSource": (
            "driver:string fsType:string secretRef:LocalObjectReference readOnly:bool options:map[string]string"
        ),
        "FlockerVolumeSource": "datasetName:string datasetUUID:string",
        "GCEPersistentDiskVolumeSource": "pdName:string fsType:string partition:int32 readOnly:bool",
        "GRPCAction": "port:int32 service:string",
        "GitRepoVolumeSource": "repository:string revision:string directory:string",
        "GlusterfsVolumeSource": "endpoints:string path:string readOnly:bool",
        "HTTPGetAction": "path:string port:intstr.IntOrString host:string scheme:URIScheme httpHeaders:[]HTTPHeader",
        "HTTPHeader": "name:string value:string",
        "HostAlias": "ip:string hostnames:[]string",
        "HostIP": "ip:string",
        "HostPathVolumeSource": "path:string type:HostPathType",
        "ISCSIVolumeSource": (
            "targetPortal:string iqn:string lun:int32 iscsiInterface:string fsType:string readOnly:bool "
            "portals:[]string chapAuthDiscovery:bool chapAuthSession:bool secretRef:LocalObjectReference "
            "initiatorName:string"
        ),
        "ImageVolumeSource": "reference:string pullPolicy:PullPolicy",
        "KeyToPath": "key:string path:string mode:int32",
        "Lifecycle": "postStart:LifecycleHandler preStop:LifecycleHandler",
        "LifecycleHandler": "exec:ExecAction httpGet:HTTPGetAction tcpSocket:TCPSocketAction sleep:SleepAction",
        "LinuxContainerUser": "uid:int64 gid:int64 supplementalGroups:[]int64",
        "LoadBalancerIngress": "ip:string hostname:string ipMode:LoadBalancerIPMode ports:[]PortStatus",
        "LoadBalancerStatus": "ingress:[]LoadBalancerIngress",
        "LocalObjectReference": "name:string",
        "ModifyVolumeStatus": "targetVolumeAttributesClassName:string status:PersistentVolumeClaimModifyVolumeStatus",
        "NFSVolumeSource": "server:string path:string readOnly:bool",
        "Namespace": (
            "kind:string apiVersion:string metadata:meta/v1.ObjectMeta spec:NamespaceSpec status:NamespaceStatus"
        ),
        "NamespaceCondition": (
            "type:NamespaceConditionType status:ConditionStatus lastTransitionTime:meta/v1.Time reason:string "
            "message:string"
        ),
        "NamespaceSpec": "finalizers:[]FinalizerName",
        "NamespaceStatus": "phase:NamespacePhase conditions:[]NamespaceCondition",
        "NodeAffinity": (
            "requiredDuringSchedulingIgnoredDuringExecution:NodeSelector "
            "preferredDuringSchedulingIgnoredDuringExecution:[]PreferredSchedulingTerm"
        ),
        "NodeSelector": "nodeSelectorTerms:[]NodeSelectorTerm",
        "NodeSelectorRequirement": "key:string operator:NodeSelectorOperator values:[]string",
        "NodeSelectorTerm": "matchExpressions:[]NodeSelectorRequirement matchFields:[]NodeSelectorRequirement",
        "ObjectFieldSelector": "apiVersion:string fieldPath:string",
        "ObjectReference": (
            "kind:string namespace:string name:string uid:types.UID apiVersion:string resourceVersion:string "
            "fieldPath:string"
        ),
        "PersistentVolumeClaim": (
            "kind:string apiVersion:string metadata:meta/v1.ObjectMeta spec:PersistentVolumeClaimSpec "
            "status:PersistentVolumeClaimStatus"
        ),
        "PersistentVolumeClaimCondition": (
            "type:PersistentVolumeClaimConditionType status:ConditionStatus lastProbeTime:meta/v1.Time "
            "lastTransitionTime:meta/v1.Time reason:string message:string"
        ),
        "PersistentVolumeClaimSpec": (
            "accessModes:[]PersistentVolumeAccessMode selector:meta/v1.LabelSelector "
            "resources:VolumeResourceRequirements volumeName:string storageClassName:string "
            "volumeMode:PersistentVolumeMode dataSource:TypedLocalObjectReference "
            "dataSourceRef:TypedObjectReference volumeAttributesClassName:string"
        ),
        "PersistentVolumeClaimStatus": (
            "phase:PersistentVolumeClaimPhase accessModes:[]PersistentVolumeAccessMode capacity:ResourceList "
            "conditions:[]PersistentVolumeClaimCondition allocatedResources:ResourceList "
            "allocatedResourceStatuses:map[ResourceName]ClaimResourceStatus currentVolumeAttributesClassName:string "
            "modifyVolumeStatus:ModifyVolumeStatus"
        ),
        "PersistentVolumeClaimTemplate": "metadata:meta/v1.ObjectMeta spec:PersistentVolumeClaimSpec",
        "PersistentVolumeClaimVolumeSource": "claimName:string readOnly:bool",
        "PhotonPersistentDiskVolumeSource": "pdID:string fsType:string",
        "Pod": "kind:string apiVersion:string metadata:meta/v1.ObjectMeta spec:PodSpec status:PodStatus",
        "PodAffinity": (
            "requiredDuringSchedulingIgnoredDuringExecution:[]PodAffinityTerm "
            "preferredDuringSchedulingIgnoredDuringExecution:[]WeightedPodAffinityTerm"
        ),
        "PodAffinityTerm": (
            "labelSelector:meta/v1.LabelSelector namespaces:[]string topologyKey:string "
            "namespaceSelector:meta/v1.LabelSelector matchLabelKeys:[]string mismatchLabelKeys:[]string"
        ),
        "PodAntiAffinity": (
            "requiredDuringSchedulingIgnoredDuringExecution:[]PodAffinityTerm "
            "preferredDuringSchedulingIgnoredDuringExecution:[]WeightedPodAffinityTerm"
        ),
        "PodCondition": (
            "type:PodConditionType status:ConditionStatus lastProbeTime:meta/v1.Time "
            "lastTransitionTime:meta/v1.Time reason:string message:string"
        ),
        "PodDNSConfig": "nameservers:[]string searches:[]string options:[]PodDNSConfigOption",
        "PodDNSConfigOption": "name:string value:string",
        "PodIP": "ip:string",
        "PodOS": "name:OSName",
        "PodReadinessGate": "conditionType:PodConditionType",
        "PodResourceClaim": "name:string resourceClaimName:string resourceClaimTemplateName:string",
        "PodResourceClaimStatus": "name:string resourceClaimName:string",
        "PodSchedulingGate": "name:string",
        "PodSecurityContext": (
            "seLinuxOptions:SELinuxOptions windowsOptions:WindowsSecurityContextOptions runAsUser:int64 "
            "runAsGroup:int64 runAsNonRoot:bool supplementalGroups:[]int64 "
            "supplementalGroupsPolicy:SupplementalGroupsPolicy fsGroup:int64 sysctls:[]Sysctl "
            "fsGroupChangePolicy:PodFSGroupChangePolicy seccompProfile:SeccompProfile "
            "appArmorProfile:AppArmorProfile seLinuxChangePolicy:PodSELinuxChangePolicy"
        ),
        "PodSpec": (
            "volumes:[]Volume initContainers:[]Container containers:[]Container "
            "ephemeralContainers:[]EphemeralContainer restartPolicy:RestartPolicy "
            "terminationGracePeriodSeconds:int64 activeDeadlineSeconds:int64 dnsPolicy:DNSPolicy "
            "nodeSelector:map[string]string serviceAccountName:string serviceAccount:string "
            "automountServiceAccountToken:bool nodeName:string hostNetwork:bool hostPID:bool hostIPC:bool "
            "shareProcessNamespace:bool securityContext:PodSecurityContext imagePullSecrets:[]LocalObjectReference "
            "hostname:string subdomain:string affinity:Affinity schedulerName:string tolerations:[]Toleration "
            "hostAliases:[]HostAlias priorityClassName:string priority:int32 dnsConfig:PodDNSConfig "
            "readinessGates:[]PodReadinessGate runtimeClassName:string enableServiceLinks:bool "
            "preemptionPolicy:PreemptionPolicy overhead:ResourceList "
            "topologySpreadConstraints:[]TopologySpreadConstraint setHostnameAsFQDN:bool os:PodOS hostUsers:bool "
            "schedulingGates:[]PodSchedulingGate resourceClaims:[]PodResourceClaim resources:ResourceRequirements"
        ),
        "PodStatus": (
            "phase:PodPhase conditions:[]PodCondition message:string reason:string nominatedNodeName:string "
            "hostIP:string hostIPs:[]HostIP podIP:string podIPs:[]PodIP startTime:meta/v1.Time "
            "initContainerStatuses:[]ContainerStatus containerStatuses:[]ContainerStatus qosClass:PodQOSClass "
            "ephemeralContainerStatuses:[]ContainerStatus resize:PodResizeStatus "
            "resourceClaimStatuses:[]PodResourceClaimStatus"
        ),
        "PodTemplateSpec": "metadata:meta/v1.ObjectMeta spec:PodSpec",
        "PortStatus": "port:int32 protocol:Protocol error:string",
        "PortworxVolumeSource": "volumeID:string fsType:string readOnly:bool",
        "PreferredSchedulingTerm": "weight:int32 preference:NodeSelectorTerm",
        "Probe": (
            "exec:ExecAction httpGet:HTTPGetAction tcpSocket:TCPSocketAction grpc:GRPCAction "
            "initialDelaySeconds:int32 timeoutSeconds:int32 periodSeconds:int32 successThreshold:int32 "
            "failureThreshold:int32 terminationGracePeriodSeconds:int64"
        ),
        "ProjectedVolumeSource": "sources:[]VolumeProjection defaultMode:int32",
        "QuobyteVolumeSource": "registry:string volume:string readOnly:bool user:string group:string tenant:string",
        "RBDVolumeSource": (
            "monitors:[]string image:string fsType:string pool:string user:string keyring:string "
            "secretRef:LocalObjectReference readOnly:bool"
        ),
        "ResourceClaim": "name:string request:string",
        "ResourceFieldSelector": "containerName:string resource:string divisor:resource.Quantity",
        "ResourceHealth": "resourceID:ResourceID health:ResourceHealthStatus",
        "ResourceRequirements": "limits:ResourceList requests:ResourceList claims:[]ResourceClaim",
        "ResourceStatus": "name:ResourceName resources:[]ResourceHealth",
        "SELinuxOptions": "user:string role:string type:string level:string",
        "ScaleIOVolumeSource": (
            "gateway:string system:string secretRef:LocalObjectReference sslEnabled:bool protectionDomain:string "
            "storagePool:string storageMode:string volumeName:string fsType:string readOnly:bool"
        ),
        "SeccompProfile": "type:SeccompProfileType localhostProfile:string",
        "Secret": (
            "kind:string apiVersion:string metadata:meta/v1.ObjectMeta immutable:bool data:map[string][]uint8 "
            "stringData:map[string]string type:SecretType"
        ),
        "SecretEnvSource": "name:string optional:bool",
        "SecretKeySelector": "name:string key:string optional:bool",
        "SecretProjection": "name:string items:[]KeyToPath optional:bool",
        "SecretVolumeSource": "secretName:string items:[]KeyToPath defaultMode:int32 optional:bool",
        "SecurityContext": (
            "capabilities:Capabilities privileged:bool seLinuxOptions:SELinuxOptions "
            "windowsOptions:WindowsSecurityContextOptions runAsUser:int64 runAsGroup:int64 runAsNonRoot:bool "
            "readOnlyRootFilesystem:bool allowPrivilegeEscalation:bool procMount:ProcMountType "
            "seccompProfile:SeccompProfile appArmorProfile:AppArmorProfile"
        ),
        "Service": "kind:string apiVersion:string metadata:meta/v1.ObjectMeta spec:ServiceSpec status:ServiceStatus",
        "ServiceAccount": (
            "kind:string apiVersion:string metadata:meta/v1.ObjectMeta secrets:[]ObjectReference "
            "imagePullSecrets:[]LocalObjectReference automountServiceAccountToken:bool"
        ),
        "ServiceAccountTokenProjection": "audience:string expirationSeconds:int64 path:string",
        "ServicePort": (
            "name:string protocol:Protocol appProtocol:string port:int32 targetPort:intstr.IntOrString nodePort:int32"
        ),
        "ServiceSpec": (
            "ports:[]ServicePort selector:map[string]string clusterIP:string clusterIPs:[]string type:ServiceType "
            "externalIPs:[]string sessionAffinity:ServiceAffinity loadBalancerIP:string "
            "loadBalancerSourceRanges:[]string externalName:string "
            "externalTrafficPolicy:ServiceExternalTrafficPolicy healthCheckNodePort:int32 "
            "publishNotReadyAddresses:bool sessionAffinityConfig:SessionAffinityConfig ipFamilies:[]IPFamily "
            "ipFamilyPolicy:IPFamilyPolicy allocateLoadBalancerNodePorts:bool loadBalancerClass:string "
            "internalTrafficPolicy:ServiceInternalTrafficPolicy trafficDistribution:string"
        ),
        "ServiceStatus": "loadBalancer:LoadBalancerStatus conditions:[]meta/v1.Condition",
        "SessionAffinityConfig": "clientIP:ClientIPConfig",
        "SleepAction": "seconds:int64",
        "StorageOSVolumeSource": (
            "volumeName:string volumeNamespace:string fsType:string readOnly:bool secretRef:LocalObjectReference"
        ),
        "Sysctl": "name:string value:string",
        "TCPSocketAction": "port:intstr.IntOrString host:string",
        "Toleration": "key:string operator:TolerationOperator value:string effect:TaintEffect tolerationSeconds:int64",
        "TopologySpreadConstraint": (
            "maxSkew:int32 topologyKey:string whenUnsatisfiable:UnsatisfiableConstraintAction "
            "labelSelector:meta/v1.LabelSelector minDomains:int32 nodeAffinityPolicy:NodeInclusionPolicy "
            "nodeTaintsPolicy:NodeInclusionPolicy matchLabelKeys:[]string"
        ),
        "TypedLocalObjectReference": "apiGroup:string kind:string name:string",
        "TypedObjectReference": "apiGroup:string kind:string name:string namespace:string",
        "Volume": (
            "name:string hostPath:HostPathVolumeSource emptyDir:EmptyDirVolumeSource "
            "gcePersistentDisk:GCEPersistentDiskVolumeSource awsElasticBlockStore:AWSElasticBlockStoreVolumeSource "
            "gitRepo:GitRepoVolumeSource secret:SecretVolumeSource nfs:NFSVolumeSource iscsi:ISCSIVolumeSource "
            "glusterfs:GlusterfsVolumeSource persistentVolumeClaim:PersistentVolumeClaimVolumeSource "
            "rbd:RBDVolumeSource flexVolume:FlexVolumeSource cinder:CinderVolumeSource cephfs:CephFSVolumeSource "
            "flocker:FlockerVolumeSource downwardAPI:DownwardAPIVolumeSource fc:FCVolumeSource "
            "azureFile:AzureFileVolumeSource configMap:ConfigMapVolumeSource "
            "vsphereVolume:VsphereVirtualDiskVolumeSource quobyte:QuobyteVolumeSource "
            "azureDisk:AzureDiskVolumeSource photonPersistentDisk:PhotonPersistentDiskVolumeSource "
            "projected:ProjectedVolumeSource portworxVolume:PortworxVolumeSource scaleIO:ScaleIOVolumeSource "
            "storageos:StorageOSVolumeSource csi:CSIVolumeSource ephemeral:EphemeralVolumeSource "
            "image:ImageVolumeSource"
        ),
        "VolumeDevice": "name:string devicePath:string",
        "VolumeMount": (
            "name:string readOnly:bool recursiveReadOnly:RecursiveReadOnlyMode mountPath:string subPath:string "
            "mountPropagation:MountPropagationMode subPathExpr:string"
        ),
        "VolumeMountStatus": "name:string mountPath:string readOnly:bool recursiveReadOnly:RecursiveReadOnlyMode",
        "VolumeProjection": (
            "secret:SecretProjection downwardAPI:DownwardAPIProjection configMap:ConfigMapProjection "
            "serviceAccountToken:ServiceAccountTokenProjection clusterTrustBundle:ClusterTrustBundleProjection"
        ),
        "VolumeResourceRequirements": "limits:ResourceList requests:ResourceList",
        "VsphereVirtualDiskVolumeSource": (
            "volumePath:string fsType:string storagePolicyName:string storagePolicyID:string"
        ),
        "WeightedPodAffinityTerm": "weight:int32 podAffinityTerm:PodAffinityTerm",
        "WindowsSecurityContextOptions": (
            "gmsaCredentialSpecName:string gmsaCredentialSpec:string runAsUserName:string hostProcess:bool"
        ),
    },
    "apps/v1": {
        "Deployment": (
            "kind:string apiVersion:string metadata:meta/v1.ObjectMeta spec:DeploymentSpec status:DeploymentStatus"
        ),
        "DeploymentCondition": (
            "type:DeploymentConditionType status:core/v1.ConditionStatus lastUpdateTime:meta/v1.Time "
            "lastTransitionTime:meta/v1.Time reason:string message:string"
        ),
        "DeploymentSpec": (
            "replicas:int32 selector:meta/v1.LabelSelector template:core/v1.PodTemplateSpec "
            "strategy:DeploymentStrategy minReadySeconds:int32 revisionHistoryLimit:int32 paused:bool "
            "progressDeadlineSeconds:int32"
        ),
        "DeploymentStatus": (
            "observedGeneration:int64 replicas:int32 updatedReplicas:int32 readyReplicas:int32 "
            "availableReplicas:int32 unavailableReplicas:int32 conditions:[]DeploymentCondition "
            "collisionCount:int32"
        ),
        "DeploymentStrategy": "type:DeploymentStrategyType rollingUpdate:RollingUpdateDeployment",
        "ReplicaSet": (
            "kind:string apiVersion:string metadata:meta/v1.ObjectMeta spec:ReplicaSetSpec status:ReplicaSetStatus"
        ),
        "ReplicaSetCondition": (
            "type:ReplicaSetConditionType status:core/v1.ConditionStatus lastTransitionTime:meta/v1.Time "
            "reason:string message:string"
        ),
        "ReplicaSetSpec": (
            "replicas:int32 minReadySeconds:int32 selector:meta/v1.LabelSelector template:core/v1.PodTemplateSpec"
        ),
        "ReplicaSetStatus": (
            "replicas:int32 fullyLabeledReplicas:int32 readyReplicas:int32 availableReplicas:int32 "
            "observedGeneration:int64 conditions:[]ReplicaSetCondition"
        ),
        "RollingUpdateDeployment": "maxUnavailable:intstr.IntOrString maxSurge:intstr.IntOrString",
        "RollingUpdateStatefulSetStrategy": "partition:int32 maxUnavailable:intstr.IntOrString",
        "StatefulSet": (
            "kind:string apiVersion:string metadata:meta/v1.ObjectMeta spec:StatefulSetSpec status:StatefulSetStatus"
        ),
        "StatefulSetCondition": (
            "type:StatefulSetConditionType status:core/v1.ConditionStatus lastTransitionTime:meta/v1.Time "
            "reason:string message:string"
        ),
        "StatefulSetOrdinals": "start:int32",
        "StatefulSetPersistentVolumeClaimRetentionPolicy": (
            "whenDeleted:PersistentVolumeClaimRetentionPolicyType whenScaled:PersistentVolumeClaimRetentionPolicyType"
        ),
        "StatefulSetSpec": (
            "replicas:int32 selector:meta/v1.LabelSelector template:core/v1.PodTemplateSpec "
            "volumeClaimTemplates:[]core/v1.PersistentVolumeClaim serviceName:string "
            "podManagementPolicy:PodManagementPolicyType updateStrategy:StatefulSetUpdateStrategy "
            "revisionHistoryLimit:int32 minReadySeconds:int32 "
            "persistentVolumeClaimRetentionPolicy:StatefulSetPersistentVolumeClaimRetentionPolicy "
            "ordinals:StatefulSetOrdinals"
        ),
        "StatefulSetStatus": (
            "observedGeneration:int64 replicas:int32 readyReplicas:int32 currentReplicas:int32 "
            "updatedReplicas:int32 currentRevision:string updateRevision:string collisionCount:int32 "
            "conditions:[]StatefulSetCondition availableReplicas:int32"
        ),
        "StatefulSetUpdateStrategy": (
            "type:StatefulSetUpdateStrategyType rollingUpdate:RollingUpdateStatefulSetStrategy"
        ),
    },
    "autoscaling/v1": {
        "Scale": "kind:string apiVersion:string metadata:meta/v1.ObjectMeta spec:ScaleSpec status:ScaleStatus",
        "ScaleSpec": "replicas:int32",
        "ScaleStatus": "replicas:int32 selector:string",
    },
    "autoscaling/v2": {
        "ContainerResourceMetricSource": "name:core/v1.ResourceName target:MetricTarget container:string",
        "ContainerResourceMetricStatus": "name:core/v1.ResourceName current:MetricValueStatus container:string",
        "CrossVersionObjectReference": "kind:string name:string apiVersion:string",
        "ExternalMetricSource": "metric:MetricIdentifier target:MetricTarget",
        "ExternalMetricStatus": "metric:MetricIdentifier current:MetricValueStatus",
        "HPAScalingPolicy": "type:HPAScalingPolicyType value:int32 periodSeconds:int32",
        "HPAScalingRules": (
            "stabilizationWindowSeconds:int32 selectPolicy:ScalingPolicySelect policies:[]HPAScalingPolicy"
        ),
        "HorizontalPodAutoscaler": (
            "kind:string apiVersion:string metadata:meta/v1.ObjectMeta spec:HorizontalPodAutoscalerSpec "
            "status:HorizontalPodAutoscalerStatus"
        ),
        "HorizontalPodAutoscalerBehavior": "scaleUp:HPAScalingRules scaleDown:HPAScalingRules",
        "HorizontalPodAutoscalerCondition": (
            "type:HorizontalPodAutoscalerConditionType status:core/v1.ConditionStatus "
            "lastTransitionTime:meta/v1.Time reason:string message:string"
        ),
        "HorizontalPodAutoscalerSpec": (
            "scaleTargetRef:CrossVersionObjectReference minReplicas:int32 maxReplicas:int32 metrics:[]MetricSpec "
            "behavior:HorizontalPodAutoscalerBehavior"
        ),
        "HorizontalPodAutoscalerStatus": (
            "observedGeneration:int64 lastScaleTime:meta/v1.Time currentReplicas:int32 desiredReplicas:int32 "
            "currentMetrics:[]MetricStatus conditions:[]HorizontalPodAutoscalerCondition"
        ),
        "MetricIdentifier": "name:string selector:meta/v1.LabelSelector",
        "MetricSpec": (
            "type:MetricSourceType object:ObjectMetricSource pods:PodsMetricSource resource:ResourceMetricSource "
            "containerResource:ContainerResourceMetricSource external:ExternalMetricSource"
        ),
        "MetricStatus": (
            "type:MetricSourceType object:ObjectMetricStatus pods:PodsMetricStatus resource:ResourceMetricStatus "
            "containerResource:ContainerResourceMetricStatus external:ExternalMetricStatus"
        ),
        "MetricTarget": (
            "type:MetricTargetType value:resource.Quantity averageValue:resource.Quantity averageUtilization:int32"
        ),
        "MetricValueStatus": "value:resource.Quantity averageValue:resource.Quantity averageUtilization:int32",
        "ObjectMetricSource": "describedObject:CrossVersionObjectReference target:MetricTarget metric:MetricIdentifier",
        "ObjectMetricStatus": (
            "metric:MetricIdentifier current:MetricValueStatus describedObject:CrossVersionObjectReference"
        ),
        "PodsMetricSource": "metric:MetricIdentifier target:MetricTarget",
        "PodsMetricStatus": "metric:MetricIdentifier current:MetricValueStatus",
        "ResourceMetricSource": "name:core/v1.ResourceName target:MetricTarget",
        "ResourceMetricStatus": "name:core/v1.ResourceName current:MetricValueStatus",
    },
    "admissionregistration/v1": {
        "MatchCondition": "name:string expression:string",
        "MutatingWebhook": (
            "name:string clientConfig:WebhookClientConfig rules:[]RuleWithOperations "
            "failurePolicy:FailurePolicyType matchPolicy:MatchPolicyType namespaceSelector:meta/v1.LabelSelector "
            "objectSelector:meta/v1.LabelSelector sideEffects:SideEffectClass timeoutSeconds:int32 "
            "admissionReviewVersions:[]string reinvocationPolicy:ReinvocationPolicyType "
            "matchConditions:[]MatchCondition"
        ),
        "MutatingWebhookConfiguration": (
            "kind:string apiVersion:string metadata:meta/v1.ObjectMeta webhooks:[]MutatingWebhook"
        ),
        "RuleWithOperations": (
            "operations:[]OperationType apiGroups:[]string apiVersions:[]string resources:[]string scope:ScopeType"
        ),
        "ServiceReference": "namespace:string name:string path:string port:int32",
        "ValidatingWebhook": (
            "name:string clientConfig:WebhookClientConfig rules:[]RuleWithOperations "
            "failurePolicy:FailurePolicyType matchPolicy:MatchPolicyType namespaceSelector:meta/v1.LabelSelector "
            "objectSelector:meta/v1.LabelSelector sideEffects:SideEffectClass timeoutSeconds:int32 "
            "admissionReviewVersions:[]string matchConditions:[]MatchCondition"
        ),
        "ValidatingWebhookConfiguration": (
            "kind:string apiVersion:string metadata:meta/v1.ObjectMeta webhooks:[]ValidatingWebhook"
        ),
        "WebhookClientConfig": "url:string service:ServiceReference caBundle:[]uint8",
    },
    "coordination/v1": {
        "Lease": "kind:string apiVersion:string metadata:meta/v1.ObjectMeta spec:LeaseSpec",
        "LeaseSpec": (
            "holderIdentity:string leaseDurationSeconds:int32 acquireTime:meta/v1.MicroTime "
            "renewTime:meta/v1.MicroTime leaseTransitions:int32 strategy:CoordinatedLeaseStrategy "
            "preferredHolder:string"
        ),
    },
    "policy/v1": {
        "PodDisruptionBudget": (
            "kind:string apiVersion:string metadata:meta/v1.ObjectMeta spec:PodDisruptionBudgetSpec "
            "status:PodDisruptionBudgetStatus"
        ),
        "PodDisruptionBudgetSpec": (
            "minAvailable:intstr.IntOrString selector:meta/v1.LabelSelector maxUnavailable:intstr.IntOrString "
            "unhealthyPodEvictionPolicy:UnhealthyPodEvictionPolicyType"
        ),
        "PodDisruptionBudgetStatus": (
            "observedGeneration:int64 disruptedPods:map[string]meta/v1.Time disruptionsAllowed:int32 "
            "currentHealthy:int32 desiredHealthy:int32 expectedPods:int32 conditions:[]meta/v1.Condition"
        ),
    },
    "rbac/v1": {
        "AggregationRule": "clusterRoleSelectors:[]meta/v1.LabelSelector",
        "ClusterRole": (
            "kind:string apiVersion:string metadata:meta/v1.ObjectMeta rules:[]PolicyRule "
            "aggregationRule:AggregationRule"
        ),
        "ClusterRoleBinding": (
            "kind:string apiVersion:string metadata:meta/v1.ObjectMeta subjects:[]Subject roleRef:RoleRef"
        ),
        "PolicyRule": (
            "verbs:[]string apiGroups:[]string resources:[]string resourceNames:[]string nonResourceURLs:[]string"
        ),
        "Role": "kind:string apiVersion:string metadata:meta/v1.ObjectMeta rules:[]PolicyRule",
        "RoleBinding": "kind:string apiVersion:string metadata:meta/v1.ObjectMeta subjects:[]Subject roleRef:RoleRef",
        "RoleRef": "apiGroup:string kind:string name:string",
        "Subject": "kind:string apiGroup:string name:string namespace:string",
    },
    "discovery/v1": {
        "Endpoint": (
            "addresses:[]string conditions:EndpointConditions hostname:string targetRef:core/v1.ObjectReference "
            "deprecatedTopology:map[string]string nodeName:string zone:string hints:EndpointHints"
        ),
        "EndpointConditions": "ready:bool serving:bool terminating:bool",
        "EndpointHints": "forZones:[]ForZone",
        "EndpointPort": "name:string protocol:core/v1.Protocol port:int32 appProtocol:string",
        "EndpointSlice": (
            "kind:string apiVersion:string metadata:meta/v1.ObjectMeta addressType:AddressType endpoints:[]Endpoint "
            "ports:[]EndpointPort"
        ),
        "ForZone": "name:string",
    },
    "authentication/v1": {
        "BoundObjectReference": "kind:string apiVersion:string name:string uid:types.UID",
        "TokenRequest": (
            "kind:string apiVersion:string metadata:meta/v1.ObjectMeta spec:TokenRequestSpec status:TokenRequestStatus"
        ),
        "TokenRequestSpec": "audiences:[]string expirationSeconds:int64 boundObjectRef:BoundObjectReference",
        "TokenRequestStatus": "token:string expirationTimestamp:meta/v1.Time",
        "TokenReview": (
            "kind:string apiVersion:string metadata:meta/v1.ObjectMeta spec:TokenReviewSpec status:TokenReviewStatus"
        ),
        "TokenReviewSpec": "token:string audiences:[]string",
        "TokenReviewStatus": "authenticated:bool user:UserInfo audiences:[]string error:string",
        "UserInfo": "username:string uid:string groups:[]string extra:map[string]ExtraValue",
    },
    "apiextensions/v1": {
        "CustomResourceColumnDefinition": (
            "name:string type:string format:string description:string priority:int32 jsonPath:string"
        ),
        "CustomResourceConversion": "strategy:ConversionStrategyType webhook:WebhookConversion",
        "CustomResourceDefinition": (
            "kind:string apiVersion:string metadata:meta/v1.ObjectMeta spec:CustomResourceDefinitionSpec "
            "status:CustomResourceDefinitionStatus"
        ),
        "CustomResourceDefinitionCondition": (
            "type:CustomResourceDefinitionConditionType status:ConditionStatus lastTransitionTime:meta/v1.Time "
            "reason:string message:string"
        ),
        "CustomResourceDefinitionNames": (
            "plural:string singular:string shortNames:[]string kind:string listKind:string categories:[]string"
        ),
        "CustomResourceDefinitionSpec": (
            "group:string names:CustomResourceDefinitionNames scope:ResourceScope "
            "versions:[]CustomResourceDefinitionVersion conversion:CustomResourceConversion "
            "preserveUnknownFields:bool"
        ),
        "CustomResourceDefinitionStatus": (
            "conditions:[]CustomResourceDefinitionCondition acceptedNames:CustomResourceDefinitionNames "
            "storedVersions:[]string"
        ),
        "CustomResourceDefinitionVersion": (
            "name:string served:bool storage:bool deprecated:bool deprecationWarning:string "
            "schema:CustomResourceValidation subresources:CustomResourceSubresources "
            "additionalPrinterColumns:[]CustomResourceColumnDefinition selectableFields:[]SelectableField"
        ),
        "CustomResourceSubresourceScale": "specReplicasPath:string statusReplicasPath:string labelSelectorPath:string",
        "CustomResourceSubresourceStatus": "",
        "CustomResourceSubresources": "status:CustomResourceSubresourceStatus scale:CustomResourceSubresourceScale",
        "CustomResourceValidation": "openAPIV3Schema:JSONSchemaProps",
        "ExternalDocumentation": "description:string url:string",
        "JSONSchemaProps": (
            "id:string $schema:JSONSchemaURL $ref:string description:string type:string format:string title:string "
            "default:JSON maximum:float64 exclusiveMaximum:bool minimum:float64 exclusiveMinimum:bool "
            "maxLength:int64 minLength:int64 pattern:string maxItems:int64 minItems:int64 uniqueItems:bool "
            "multipleOf:float64 enum:[]JSON maxProperties:int64 minProperties:int64 required:[]string "
            "items:JSONSchemaPropsOrArray allOf:[]JSONSchemaProps oneOf:[]JSONSchemaProps anyOf:[]JSONSchemaProps "
            "not:JSONSchemaProps properties:map[string]JSONSchemaProps additionalProperties:JSONSchemaPropsOrBool "
            "patternProperties:map[string]JSONSchemaProps dependencies:JSONSchemaDependencies "
            "additionalItems:JSONSchemaPropsOrBool definitions:JSONSchemaDefinitions "
            "externalDocs:ExternalDocumentation example:JSON nullable:bool "
            "x-kubernetes-preserve-unknown-fields:bool x-kubernetes-embedded-resource:bool "
            "x-kubernetes-int-or-string:bool x-kubernetes-list-map-keys:[]string x-kubernetes-list-type:string "
            "x-kubernetes-map-type:string x-kubernetes-validations:ValidationRules"
        ),
        "SelectableField": "jsonPath:string",
        "ServiceReference": "namespace:string name:string path:string port:int32",
        "ValidationRule": (
            "rule:string message:string messageExpression:string reason:FieldValueErrorReason fieldPath:string "
            "optionalOldSelf:bool"
        ),
        "WebhookClientConfig": "url:string service:ServiceReference caBundle:[]uint8",
        "WebhookConversion": "clientConfig:WebhookClientConfig conversionReviewVersions:[]string",
    },
}
STRING_TYPES: dict[str, str] = {
    "meta/v1": "ConditionStatus DeletionPropagation LabelSelectorOperator ManagedFieldsOperationType",
    "core/v1": (
        "AppArmorProfileType AzureDataDiskCachingMode AzureDataDiskKind Capability ClaimResourceStatus "
        "ConditionStatus ContainerRestartPolicy DNSPolicy FinalizerName HostPathType IPFamily IPFamilyPolicy "
        "LoadBalancerIPMode MountPropagationMode NamespaceConditionType NamespacePhase NodeInclusionPolicy "
        "NodeSelectorOperator OSName PersistentVolumeAccessMode PersistentVolumeClaimConditionType "
        "PersistentVolumeClaimModifyVolumeStatus PersistentVolumeClaimPhase PersistentVolumeMode PodConditionType "
        "PodFSGroupChangePolicy PodPhase PodQOSClass PodResizeStatus PodSELinuxChangePolicy PreemptionPolicy "
        "ProcMountType Protocol PullPolicy RecursiveReadOnlyMode ResourceHealthStatus ResourceID ResourceName "
        "ResourceResizeRestartPolicy RestartPolicy SeccompProfileType SecretType ServiceAffinity "
        "ServiceExternalTrafficPolicy ServiceInternalTrafficPolicy ServiceType StorageMedium "
        "SupplementalGroupsPolicy TaintEffect TerminationMessagePolicy TolerationOperator URIScheme "
        "UnsatisfiableConstraintAction"
    ),
    "apps/v1": (
        "DeploymentConditionType DeploymentStrategyType PersistentVolumeClaimRetentionPolicyType "
        "PodManagementPolicyType ReplicaSetConditionType StatefulSetConditionType StatefulSetUpdateStrategyType"
    ),
    "autoscaling/v2": (
        "HPAScalingPolicyType HorizontalPodAutoscalerConditionType MetricSourceType MetricTargetType "
        "ScalingPolicySelect"
    ),
    "admissionregistration/v1": (
        "FailurePolicyType MatchPolicyType OperationType ReinvocationPolicyType ScopeType SideEffectClass"
    ),
    "coordination/v1": "CoordinatedLeaseStrategy",
    "policy/v1": "UnhealthyPodEvictionPolicyType",
    "discovery/v1": "AddressType",
    "apiextensions/v1": (
        "ConditionStatus ConversionStrategyType CustomResourceDefinitionConditionType FieldValueErrorReason "
        "JSONSchemaURL ResourceScope"
    ),
    "types": "UID",
}
NAMED_TYPES: dict[str, dict[str, str]] = {
    "core/v1": {
        "ResourceList": "map[ResourceName]resource.Quantity",
    },
    "authentication/v1": {
        "ExtraValue": "[]string",
    },
    "apiextensions/v1": {
        "JSONSchemaDefinitions": "map[string]JSONSchemaProps",
        "JSONSchemaDependencies": "map[string]JSONSchemaPropsOrStringArray",
        "ValidationRules": "[]ValidationRule",
    },
}

# Struct fields declared as pointers (`*bool`, `*PodSecurityContext`): absent when nil, kept when they point at a
# zero value.
POINTERS: dict[str, dict[str, str]] = {
    "meta/v1": {
        "DeleteOptions": (
            "gracePeriodSeconds preconditions orphanDependents propagationPolicy "
            "ignoreStoreReadErrorWithClusterBreakingPotential"
        ),
        "ManagedFieldsEntry": "time fieldsV1",
        "ObjectMeta": "deletionTimestamp deletionGracePeriodSeconds",
        "OwnerReference": "controller blockOwnerDeletion",
        "Preconditions": "uid resourceVersion",
    },
    "core/v1": {
        "Affinity": "nodeAffinity podAffinity podAntiAffinity",
        "AppArmorProfile": "localhostProfile",
        "AzureDiskVolumeSource": "cachingMode fsType readOnly kind",
        "CSIVolumeSource": "readOnly fsType nodePublishSecretRef",
        "CephFSVolumeSource": "secretRef",
        "CinderVolumeSource": "secretRef",
        "ClientIPConfig": "timeoutSeconds",
        "ClusterTrustBundleProjection": "name signerName labelSelector optional",
        "ConfigMap": "immutable",
        "ConfigMapEnvSource": "optional",
        "ConfigMapKeySelector": "optional",
        "ConfigMapProjection": "optional",
        "ConfigMapVolumeSource": "defaultMode optional",
        "Container": "restartPolicy livenessProbe readinessProbe startupProbe lifecycle securityContext",
        "ContainerState": "waiting running terminated",
        "ContainerStatus": "started resources user",
        "ContainerUser": "linux",
        "DownwardAPIVolumeFile": "fieldRef resourceFieldRef mode",
        "DownwardAPIVolumeSource": "defaultMode",
        "EmptyDirVolumeSource": "sizeLimit",
        "EnvFromSource": "configMapRef secretRef",
        "EnvVar": "valueFrom",
        "EnvVarSource": "fieldRef resourceFieldRef configMapKeyRef secretKeyRef",
        "EphemeralContainer": "restartPolicy livenessProbe readinessProbe startupProbe lifecycle securityContext",
        "EphemeralVolumeSource": "volumeClaimTemplate",
        "FCVolumeSource": "lun",
        "FlexVolumeSource": "secretRef",
        "GRPCAction": "service",
        "HostPathVolumeSource": "type",
        "ISCSIVolumeSource": "secretRef initiatorName",
        "KeyToPath": "mode",
        "Lifecycle": "postStart preStop",
        "LifecycleHandler": "exec httpGet tcpSocket sleep",
        "LoadBalancerIngress": "ipMode",
        "NodeAffinity": "requiredDuringSchedulingIgnoredDuringExecution",
        "PersistentVolumeClaimSpec": (
            "selector storageClassName volumeMode dataSource dataSourceRef volumeAttributesClassName"
        ),
        "PersistentVolumeClaimStatus": "currentVolumeAttributesClassName modifyVolumeStatus",
        "PodAffinityTerm": "labelSelector namespaceSelector",
        "PodDNSConfigOption": "value",
        "PodResourceClaim": "resourceClaimName resourceClaimTemplateName",
        "PodResourceClaimStatus": "resourceClaimName",
        "PodSecurityContext": (
            "seLinuxOptions windowsOptions runAsUser runAsGroup runAsNonRoot supplementalGroupsPolicy fsGroup "
            "fsGroupChangePolicy seccompProfile appArmorProfile seLinuxChangePolicy"
        ),
        "PodSpec": (
            "terminationGracePeriodSeconds activeDeadlineSeconds automountServiceAccountToken shareProcessNamespace "
            "securityContext affinity priority dnsConfig runtimeClassName enableServiceLinks preemptionPolicy "
            "setHostnameAsFQDN os hostUsers resources"
        ),
        "PodStatus": "startTime",
        "PortStatus": "error",
        "Probe": "exec httpGet tcpSocket grpc terminationGracePeriodSeconds",
        "ProjectedVolumeSource": "defaultMode",
        "RBDVolumeSource": "secretRef",
        "ScaleIOVolumeSource": "secretRef",
        "SeccompProfile": "localhostProfile",
        "Secret": "immutable",
        "SecretEnvSource": "optional",
        "SecretKeySelector": "optional",
        "SecretProjection": "optional",
        "SecretVolumeSource": "defaultMode optional",
        "SecurityContext": (
            "capabilities privileged seLinuxOptions windowsOptions runAsUser runAsGroup runAsNonRoot "
            "readOnlyRootFilesystem allowPrivilegeEscalation procMount seccompProfile appArmorProfile"
        ),
        "ServiceAccount": "automountServiceAccountToken",
        "ServiceAccountTokenProjection": "expirationSeconds",
        "ServicePort": "appProtocol",
        "ServiceSpec": (
            "sessionAffinityConfig ipFamilyPolicy allocateLoadBalancerNodePorts loadBalancerClass "
            "internalTrafficPolicy trafficDistribution"
        ),
        "SessionAffinityConfig": "clientIP",
        "StorageOSVolumeSource": "secretRef",
        "Toleration": "tolerationSeconds",
        "TopologySpreadConstraint": "labelSelector minDomains nodeAffinityPolicy nodeTaintsPolicy",
        "TypedLocalObjectReference": "apiGroup",
        "TypedObjectReference": "apiGroup namespace",
        "Volume": (
            "hostPath emptyDir gcePersistentDisk awsElasticBlockStore gitRepo secret nfs iscsi glusterfs "
            "persistentVolumeClaim rbd flexVolume cinder cephfs flocker downwardAPI fc azureFile configMap "
            "vsphereVolume quobyte azureDisk photonPersistentDisk projected portworxVolume scaleIO storageos csi "
            "ephemeral image"
        ),
        "VolumeMount": "recursiveReadOnly mountPropagation",
        "VolumeMountStatus": "recursiveReadOnly",
        "VolumeProjection": "secret downwardAPI configMap serviceAccountToken clusterTrustBundle",
        "WindowsSecurityContextOptions": "gmsaCredentialSpecName gmsaCredentialSpec runAsUserName hostProcess",
    },
    "apps/v1": {
        "DeploymentSpec": "replicas selector revisionHistoryLimit progressDeadlineSeconds",
        "DeploymentStatus": "collisionCount",
        "DeploymentStrategy": "rollingUpdate",
        "ReplicaSetSpec": "replicas selector",
        "RollingUpdateDeployment": "maxUnavailable maxSurge",
        "RollingUpdateStatefulSetStrategy": "partition maxUnavailable",
        "StatefulSetSpec": "replicas selector revisionHistoryLimit persistentVolumeClaimRetentionPolicy ordinals",
        "StatefulSetStatus": "collisionCount",
        "StatefulSetUpdateStrategy": "rollingUpdate",
    },
    "autoscaling/v2": {
        "HPAScalingRules": "stabilizationWindowSeconds selectPolicy",
        "HorizontalPodAutoscalerBehavior": "scaleUp scaleDown",
        "HorizontalPodAutoscalerSpec": "minReplicas behavior",
        "HorizontalPodAutoscalerStatus": "observedGeneration lastScaleTime",
        "MetricIdentifier": "selector",
        "MetricSpec": "object pods resource containerResource external",
        "MetricStatus": "object pods resource containerResource external",
        "MetricTarget": "value averageValue averageUtilization",
        "MetricValueStatus": "value averageValue averageUtilization",
    },
    "admissionregistration/v1": {
        "MutatingWebhook": (
            "failurePolicy matchPolicy namespaceSelector objectSelector sideEffects timeoutSeconds reinvocationPolicy"
        ),
        "RuleWithOperations": "scope",
        "ServiceReference": "path port",
        "ValidatingWebhook": "failurePolicy matchPolicy namespaceSelector objectSelector sideEffects timeoutSeconds",
        "WebhookClientConfig": "url service",
    },
    "coordination/v1": {
        "LeaseSpec": (
            "holderIdentity leaseDurationSeconds acquireTime renewTime leaseTransitions strategy preferredHolder"
        ),
    },
    "policy/v1": {
        "PodDisruptionBudgetSpec": "minAvailable selector maxUnavailable unhealthyPodEvictionPolicy",
    },
    "rbac/v1": {
        "ClusterRole": "aggregationRule",
    },
    "discovery/v1": {
        "Endpoint": "hostname targetRef nodeName zone hints",
        "EndpointConditions": "ready serving terminating",
        "EndpointPort": "name protocol port appProtocol",
    },
    "authentication/v1": {
        "TokenRequestSpec": "expirationSeconds boundObjectRef",
    },
    "apiextensions/v1": {
        "CustomResourceConversion": "webhook",
        "CustomResourceDefinitionSpec": "conversion",
        "CustomResourceDefinitionVersion": "deprecationWarning schema subresources",
        "CustomResourceSubresourceScale": "labelSelectorPath",
        "CustomResourceSubresources": "status scale",
        "CustomResourceValidation": "openAPIV3Schema",
        "JSONSchemaProps": (
            "$ref default maximum minimum maxLength minLength maxItems minItems multipleOf maxProperties minProperties "
            "items not additionalProperties additionalItems externalDocs example x-kubernetes-preserve-unknown-fields "
            "x-kubernetes-list-type x-kubernetes-map-type"
        ),
        "ServiceReference": "path port",
        "ValidationRule": "reason optionalOldSelf",
        "WebhookClientConfig": "url service",
        "WebhookConversion": "clientConfig",
    },
}

# Struct fields whose JSON tag lacks `omitempty`: encoded even when empty (`null` for a nil slice, map or pointer).
WITHOUT_OMITEMPTY: dict[str, dict[str, str]] = {
    "meta/v1": {
        "Condition": "type status lastTransitionTime reason message",
        "LabelSelectorRequirement": "key operator",
        "OwnerReference": "apiVersion kind name uid",
    },
    "core/v1": {
        "AWSElasticBlockStoreVolumeSource": "volumeID",
        "AppArmorProfile": "type",
        "AzureDiskVolumeSource": "diskName diskURI",
        "AzureFileVolumeSource": "secretName shareName",
        "Binding": "target",
        "CSIVolumeSource": "driver",
        "CephFSVolumeSource": "monitors",
        "CinderVolumeSource": "volumeID",
        "ClusterTrustBundleProjection": "path",
        "ConfigMapKeySelector": "key",
        "Container": "name",
        "ContainerPort": "containerPort",
        "ContainerResizePolicy": "resourceName restartPolicy",
        "ContainerStateTerminated": "exitCode",
        "ContainerStatus": "name ready restartCount image imageID",
        "DownwardAPIVolumeFile": "path",
        "EnvVar": "name",
        "EphemeralContainer": "name",
        "FlexVolumeSource": "driver",
        "GCEPersistentDiskVolumeSource": "pdName",
        "GRPCAction": "port service",
        "GitRepoVolumeSource": "repository",
        "GlusterfsVolumeSource": "endpoints path",
        "HTTPGetAction": "port",
        "HTTPHeader": "name value",
        "HostAlias": "ip",
        "HostIP": "ip",
        "HostPathVolumeSource": "path",
        "ISCSIVolumeSource": "targetPortal iqn lun",
        "KeyToPath": "key path",
        "LinuxContainerUser": "uid gid",
        "ModifyVolumeStatus": "status",
        "NFSVolumeSource": "server path",
        "NamespaceCondition": "type status",
        "NodeSelector": "nodeSelectorTerms",
        "NodeSelectorRequirement": "key operator",
        "ObjectFieldSelector": "fieldPath",
        "PersistentVolumeClaimCondition": "type status",
        "PersistentVolumeClaimTemplate": "spec",
        "PersistentVolumeClaimVolumeSource": "claimName",
        "PhotonPersistentDiskVolumeSource": "pdID",
        "PodAffinityTerm": "topologyKey",
        "PodCondition": "type status",
        "PodIP": "ip",
        "PodOS": "name",
        "PodReadinessGate": "conditionType",
        "PodResourceClaim": "name",
        "PodResourceClaimStatus": "name",
        "PodSchedulingGate": "name",
        "PodSpec": "containers",
        "PortStatus": "port protocol",
        "PortworxVolumeSource": "volumeID",
        "PreferredSchedulingTerm": "weight preference",
        "ProjectedVolumeSource": "sources",
        "QuobyteVolumeSource": "registry volume",
        "RBDVolumeSource": "monitors image",
        "ResourceClaim": "name",
        "ResourceFieldSelector": "resource",
        "ResourceHealth": "resourceID",
        "ResourceStatus": "name",
        "ScaleIOVolumeSource": "gateway system secretRef",
        "SeccompProfile": "type",
        "SecretKeySelector": "key",
        "ServiceAccountTokenProjection": "path",
        "ServicePort": "port",
        "SleepAction": "seconds",
        "Sysctl": "name value",
        "TCPSocketAction": "port",
        "TopologySpreadConstraint": "maxSkew topologyKey whenUnsatisfiable",
        "TypedLocalObjectReference": "apiGroup kind name",
        "TypedObjectReference": "apiGroup kind name",
        "Volume": "name",
        "VolumeDevice": "name devicePath",
        "VolumeMount": "name mountPath",
        "VolumeMountStatus": "name mountPath",
        "VsphereVirtualDiskVolumeSource": "volumePath",
        "WeightedPodAffinityTerm": "weight podAffinityTerm",
    },
    "apps/v1": {
        "DeploymentCondition": "type status",
        "DeploymentSpec": "selector template",
        "ReplicaSetCondition": "type status",
        "ReplicaSetSpec": "selector",
        "ReplicaSetStatus": "replicas",
        "StatefulSetCondition": "type status",
        "StatefulSetOrdinals": "start",
        "StatefulSetSpec": "selector template serviceName",
        "StatefulSetStatus": "replicas availableReplicas",
    },
    "autoscaling/v1": {
        "ScaleStatus": "replicas",
    },
    "autoscaling/v2": {
        "ContainerResourceMetricSource": "name target container",
        "ContainerResourceMetricStatus": "name current container",
        "CrossVersionObjectReference": "kind name",
        "ExternalMetricSource": "metric target",
        "ExternalMetricStatus": "metric current",
        "HPAScalingPolicy": "type value periodSeconds",
        "HorizontalPodAutoscalerCondition": "type status",
        "HorizontalPodAutoscalerSpec": "scaleTargetRef maxReplicas",
        "HorizontalPodAutoscalerStatus": "desiredReplicas currentMetrics",
        "MetricIdentifier": "name",
        "MetricSpec": "type",
        "MetricStatus": "type",
        "MetricTarget": "type",
        "ObjectMetricSource": "describedObject target metric",
        "ObjectMetricStatus": "metric current describedObject",
        "PodsMetricSource": "metric target",
        "PodsMetricStatus": "metric current",
        "ResourceMetricSource": "name target",
        "ResourceMetricStatus": "name current",
    },
    "admissionregistration/v1": {
        "MatchCondition": "name expression",
        "MutatingWebhook": "name clientConfig sideEffects admissionReviewVersions",
        "ServiceReference": "namespace name",
        "ValidatingWebhook": "name clientConfig sideEffects admissionReviewVersions",
    },
    "policy/v1": {
        "PodDisruptionBudgetStatus": "disruptionsAllowed currentHealthy desiredHealthy expectedPods",
    },
    "rbac/v1": {
        "ClusterRole": "rules",
        "ClusterRoleBinding": "roleRef",
        "PolicyRule": "verbs",
        "Role": "rules",
        "RoleBinding": "roleRef",
        "RoleRef": "apiGroup kind name",
        "Subject": "kind name",
    },
    "discovery/v1": {
        "Endpoint": "addresses",
        "EndpointSlice": "addressType endpoints ports",
        "ForZone": "name",
    },
    "authentication/v1": {
        "TokenRequest": "spec",
        "TokenRequestSpec": "audiences expirationSeconds boundObjectRef",
        "TokenRequestStatus": "token expirationTimestamp",
        "TokenReview": "spec",
    },
    "apiextensions/v1": {
        "CustomResourceColumnDefinition": "name type jsonPath",
        "CustomResourceConversion": "strategy",
        "CustomResourceDefinition": "spec",
        "CustomResourceDefinitionCondition": "type status",
        "CustomResourceDefinitionNames": "plural kind",
        "CustomResourceDefinitionSpec": "group names scope versions",
        "CustomResourceDefinitionStatus": "conditions acceptedNames storedVersions",
        "CustomResourceDefinitionVersion": "name served storage",
        "CustomResourceSubresourceScale": "specReplicasPath statusReplicasPath",
        "SelectableField": "jsonPath",
        "ServiceReference": "namespace name",
        "ValidationRule": "rule",
        "WebhookConversion": "conversionReviewVersions",
    },
}
