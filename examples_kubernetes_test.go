package ermeosecrets

// The Kubernetes examples of docs/kubernetes.md (examples/kubernetes/*.yaml)
// are checked here: every document parses, every field it uses is one that
// the consumer's version declares (the tables below, taken from the sources
// that docs/kubernetes.md#sources-and-versions lists), and the settings the
// page asks for hold: the VaultDynamicSecret reads creds/<name> of the mount
// through a VaultAuth of the examples, renewalPercent is at most 77, ESO's
// refreshInterval and the CSI driver's rotation poll are below min_ttl/2,
// and nothing renders the token only once.

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

const (
	k8sExamplesDir = "examples/kubernetes"
	k8sDocFile     = "docs/kubernetes.md"
	// k8sMount is the mount the page and its examples use, as the README does.
	k8sMount = "ermeo"
	// vsoMaxRenewalPercent: VSO acts at renewalPercent plus up to 10% of
	// each lease; docs/kubernetes.md says why 77 is the most.
	vsoMaxRenewalPercent = 77
	// vsoDefaultRenewalPercent is the CRD's default.
	vsoDefaultRenewalPercent = 67
)

// k8sMinTTL is the min_ttl the page assumes: the accounts' default.
var k8sMinTTL = defaultMinTTL

// k8sCredsPath is a creds/<name> path of k8sMount, with the account's name
// as config's and accounts' paths accept it.
var (
	k8sCredsPath     = regexp.MustCompile(`^creds/[A-Za-z0-9_-]{1,128}$`)
	k8sFullCredsPath = regexp.MustCompile(`^/?` + k8sMount + `/creds/[A-Za-z0-9_-]{1,128}$`)
)

// k8sShape is what a YAML value may hold. nil accepts any value: a scalar,
// or a map or list whose keys the consumer does not fix (labels,
// annotations, free-form parameters). Otherwise the value is a mapping
// whose keys must be among fields, or, with list, a list of such mappings.
type k8sShape struct {
	fields map[string]*k8sShape
	list   bool
}

type k8sFields = map[string]*k8sShape

func k8sObj(f k8sFields) *k8sShape  { return &k8sShape{fields: f} }
func k8sList(f k8sFields) *k8sShape { return &k8sShape{fields: f, list: true} }

// k8sAny is a value whose content is not checked by name.
var k8sAny *k8sShape

// k8sResource is a top-level object: apiVersion, kind, metadata, and spec
// (or the other top-level fields given).
func k8sResource(top k8sFields) *k8sShape {
	f := k8sFields{"apiVersion": k8sAny, "kind": k8sAny, "metadata": k8sMetadata}
	for k, v := range top {
		f[k] = v
	}
	return k8sObj(f)
}

// Kubernetes' own types (k8s.io/api: meta/v1 ObjectMeta, apps/v1
// DeploymentSpec, core/v1 PodSpec, Container, Volume): the fields the
// examples may use.
var (
	k8sMetadata = k8sObj(k8sFields{
		"name": k8sAny, "namespace": k8sAny, "labels": k8sAny, "annotations": k8sAny,
	})
	k8sSecretKeySelector = k8sObj(k8sFields{"key": k8sAny, "name": k8sAny, "namespace": k8sAny})
	k8sVolumeMount       = k8sList(k8sFields{
		"name": k8sAny, "mountPath": k8sAny, "readOnly": k8sAny, "subPath": k8sAny,
		"subPathExpr": k8sAny, "mountPropagation": k8sAny, "recursiveReadOnly": k8sAny,
	})
	k8sContainer = k8sList(k8sFields{
		"name": k8sAny, "image": k8sAny, "imagePullPolicy": k8sAny, "command": k8sAny,
		"args": k8sAny, "workingDir": k8sAny, "ports": k8sAny,
		"env":          k8sList(k8sFields{"name": k8sAny, "value": k8sAny, "valueFrom": k8sAny}),
		"envFrom":      k8sAny,
		"resources":    k8sAny,
		"volumeMounts": k8sVolumeMount, "securityContext": k8sAny,
		"livenessProbe": k8sAny, "readinessProbe": k8sAny, "startupProbe": k8sAny,
	})
	k8sVolume = k8sList(k8sFields{
		"name": k8sAny,
		"secret": k8sObj(k8sFields{
			"secretName": k8sAny, "items": k8sAny, "defaultMode": k8sAny, "optional": k8sAny,
		}),
		"csi": k8sObj(k8sFields{
			"driver": k8sAny, "readOnly": k8sAny, "fsType": k8sAny,
			"volumeAttributes": k8sAny, "nodePublishSecretRef": k8sAny,
		}),
		"emptyDir": k8sAny, "configMap": k8sAny, "projected": k8sAny,
	})
	k8sPodSpec = k8sObj(k8sFields{
		"serviceAccountName": k8sAny, "automountServiceAccountToken": k8sAny,
		"initContainers": k8sContainer, "containers": k8sContainer, "volumes": k8sVolume,
		"securityContext": k8sAny, "nodeSelector": k8sAny, "tolerations": k8sAny,
		"affinity": k8sAny, "imagePullSecrets": k8sAny, "terminationGracePeriodSeconds": k8sAny,
	})
	k8sDeploymentSpec = k8sObj(k8sFields{
		"replicas": k8sAny,
		"selector": k8sObj(k8sFields{"matchLabels": k8sAny, "matchExpressions": k8sAny}),
		"template": k8sObj(k8sFields{"metadata": k8sMetadata, "spec": k8sPodSpec}),
		"strategy": k8sAny, "minReadySeconds": k8sAny, "revisionHistoryLimit": k8sAny,
		"progressDeadlineSeconds": k8sAny, "paused": k8sAny,
	})
)

// Vault Secrets Operator 1.4.1, secrets.hashicorp.com/v1beta1:
// api/v1beta1/vaultconnection_types.go, vaultauth_types.go,
// vaultdynamicsecret_types.go (and the CRD generated from them).
var (
	vsoConnectionSpec = k8sObj(k8sFields{
		"address": k8sAny, "headers": k8sAny, "tlsServerName": k8sAny,
		"caCertSecretRef": k8sAny, "skipTLSVerify": k8sAny,
	})
	vsoAuthSpec = k8sObj(k8sFields{
		"vaultConnectionRef": k8sAny,
		"vaultAuthGlobalRef": k8sObj(k8sFields{
			"name": k8sAny, "namespace": k8sAny, "allowDefault": k8sAny,
			"mergeStrategy": k8sObj(k8sFields{"headers": k8sAny, "params": k8sAny}),
		}),
		"namespace": k8sAny, "allowedNamespaces": k8sAny, "method": k8sAny, "mount": k8sAny,
		"params": k8sAny, "headers": k8sAny,
		"kubernetes": k8sObj(k8sFields{
			"role": k8sAny, "serviceAccount": k8sAny, "audiences": k8sAny,
			"tokenExpirationSeconds": k8sAny,
		}),
		"appRole": k8sObj(k8sFields{"roleId": k8sAny, "secretRef": k8sAny}),
		"jwt": k8sObj(k8sFields{
			"role": k8sAny, "secretRef": k8sAny, "serviceAccount": k8sAny,
			"audiences": k8sAny, "tokenExpirationSeconds": k8sAny,
		}),
		"aws": k8sObj(k8sFields{
			"role": k8sAny, "region": k8sAny, "headerValue": k8sAny, "sessionName": k8sAny,
			"stsEndpoint": k8sAny, "iamEndpoint": k8sAny, "secretRef": k8sAny,
			"irsaServiceAccount": k8sAny,
		}),
		"gcp": k8sObj(k8sFields{
			"role": k8sAny, "workloadIdentityServiceAccount": k8sAny, "region": k8sAny,
			"clusterName": k8sAny, "projectID": k8sAny,
		}),
		"storageEncryption": k8sObj(k8sFields{"mount": k8sAny, "keyName": k8sAny}),
	})
	vsoDynamicSecretSpec = k8sObj(k8sFields{
		"vaultAuthRef": k8sAny, "namespace": k8sAny, "mount": k8sAny,
		"requestHTTPMethod": k8sAny, "path": k8sAny, "params": k8sAny,
		"renewalPercent": k8sAny, "revoke": k8sAny, "allowStaticCreds": k8sAny,
		"rolloutRestartTargets": k8sList(k8sFields{"kind": k8sAny, "name": k8sAny}),
		"destination": k8sObj(k8sFields{
			"name": k8sAny, "create": k8sAny, "overwrite": k8sAny, "labels": k8sAny,
			"annotations": k8sAny, "type": k8sAny,
			"transformation": k8sObj(k8sFields{
				"templates": k8sAny, "transformationRefs": k8sAny, "includes": k8sAny,
				"excludes": k8sAny, "excludeRaw": k8sAny,
			}),
		}),
		"refreshAfter": k8sAny,
	})
)

// External Secrets Operator 1.3.2: the CRDs
// generators.external-secrets.io_vaultdynamicsecrets.yaml (v1alpha1) and
// external-secrets.io_externalsecrets.yaml (v1) of that release.
var (
	esoAuthSecretRef  = k8sSecretKeySelector
	esoServiceAccount = k8sObj(k8sFields{"audiences": k8sAny, "name": k8sAny, "namespace": k8sAny})
	esoVaultProvider  = k8sObj(k8sFields{
		"auth": k8sObj(k8sFields{
			"appRole": k8sObj(k8sFields{
				"path": k8sAny, "roleId": k8sAny, "roleRef": esoAuthSecretRef, "secretRef": esoAuthSecretRef,
			}),
			"cert": k8sObj(k8sFields{
				"clientCert": esoAuthSecretRef, "path": k8sAny, "secretRef": esoAuthSecretRef,
			}),
			"gcp": k8sAny, "iam": k8sAny,
			"jwt": k8sObj(k8sFields{
				"kubernetesServiceAccountToken": k8sObj(k8sFields{
					"audiences": k8sAny, "expirationSeconds": k8sAny, "serviceAccountRef": esoServiceAccount,
				}),
				"path": k8sAny, "role": k8sAny, "secretRef": esoAuthSecretRef,
			}),
			"kubernetes": k8sObj(k8sFields{
				"mountPath": k8sAny, "role": k8sAny, "secretRef": esoAuthSecretRef,
				"serviceAccountRef": esoServiceAccount,
			}),
			"ldap": k8sObj(k8sFields{
				"path": k8sAny, "secretRef": esoAuthSecretRef, "username": k8sAny,
			}),
			"namespace":      k8sAny,
			"tokenSecretRef": esoAuthSecretRef,
			"userPass": k8sObj(k8sFields{
				"path": k8sAny, "secretRef": esoAuthSecretRef, "username": k8sAny,
			}),
		}),
		"caBundle": k8sAny, "caProvider": k8sAny, "checkAndSet": k8sAny,
		"forwardInconsistent": k8sAny, "headers": k8sAny, "namespace": k8sAny, "path": k8sAny,
		"readYourWrites": k8sAny, "server": k8sAny, "tls": k8sAny, "version": k8sAny,
	})
	esoGeneratorSpec = k8sObj(k8sFields{
		"allowEmptyResponse": k8sAny, "controller": k8sAny, "method": k8sAny,
		"parameters": k8sAny, "path": k8sAny, "provider": esoVaultProvider,
		"resultType":    k8sAny,
		"retrySettings": k8sObj(k8sFields{"maxRetries": k8sAny, "retryInterval": k8sAny}),
	})
	esoSourceRef = k8sObj(k8sFields{
		"generatorRef": k8sObj(k8sFields{"apiVersion": k8sAny, "kind": k8sAny, "name": k8sAny}),
		"storeRef":     k8sObj(k8sFields{"kind": k8sAny, "name": k8sAny}),
	})
	esoExternalSecretSpec = k8sObj(k8sFields{
		"data": k8sList(k8sFields{"remoteRef": k8sAny, "secretKey": k8sAny, "sourceRef": esoSourceRef}),
		"dataFrom": k8sList(k8sFields{
			"extract": k8sAny, "find": k8sAny, "rewrite": k8sAny, "sourceRef": esoSourceRef,
		}),
		"refreshInterval": k8sAny, "refreshPolicy": k8sAny,
		"secretStoreRef": k8sObj(k8sFields{"kind": k8sAny, "name": k8sAny}),
		"target": k8sObj(k8sFields{
			"creationPolicy": k8sAny, "deletionPolicy": k8sAny, "immutable": k8sAny,
			"manifest": k8sAny, "name": k8sAny,
			"template": k8sObj(k8sFields{
				"data": k8sAny, "engineVersion": k8sAny, "mergePolicy": k8sAny,
				"metadata":     k8sObj(k8sFields{"annotations": k8sAny, "finalizers": k8sAny, "labels": k8sAny}),
				"templateFrom": k8sAny, "type": k8sAny,
			}),
		}),
	})
)

// The Secrets Store CSI driver's SecretProviderClass
// (apis/v1/secretproviderclass_types.go), whose parameters are those the
// Vault CSI provider 1.5.0 reads (internal/config/config.go).
var (
	csiProviderParameters = k8sObj(k8sFields{
		"roleName": k8sAny, "vaultAddress": k8sAny, "vaultNamespace": k8sAny,
		"vaultKubernetesMountPath": k8sAny, "vaultAuthMountPath": k8sAny,
		"vaultSkipTLSVerify": k8sAny, "vaultCACertPath": k8sAny, "vaultCADirectory": k8sAny,
		"vaultTLSServerName": k8sAny, "vaultTLSClientCertPath": k8sAny,
		"vaultTLSClientKeyPath": k8sAny, "audience": k8sAny, "objects": k8sAny,
	})
	csiSecretProviderClassSpec = k8sObj(k8sFields{
		"provider": k8sAny, "parameters": csiProviderParameters,
		"secretObjects": k8sList(k8sFields{
			"secretName": k8sAny, "type": k8sAny, "labels": k8sAny, "annotations": k8sAny,
			"data": k8sList(k8sFields{"objectName": k8sAny, "key": k8sAny}),
		}),
	})
	// csiObjects are the keys of each entry of the provider's "objects".
	csiObjects = k8sList(k8sFields{
		"objectName": k8sAny, "secretPath": k8sAny, "secretKey": k8sAny, "method": k8sAny,
		"secretArgs": k8sAny, "filePermission": k8sAny, "encoding": k8sAny,
	})
)

// k8sKinds are the kinds the examples may hold, by "apiVersion kind".
var k8sKinds = map[string]*k8sShape{
	"v1 ServiceAccount": k8sResource(k8sFields{
		"automountServiceAccountToken": k8sAny, "secrets": k8sAny, "imagePullSecrets": k8sAny,
	}),
	"apps/v1 Deployment":                                         k8sResource(k8sFields{"spec": k8sDeploymentSpec}),
	"secrets.hashicorp.com/v1beta1 VaultConnection":              k8sResource(k8sFields{"spec": vsoConnectionSpec}),
	"secrets.hashicorp.com/v1beta1 VaultAuth":                    k8sResource(k8sFields{"spec": vsoAuthSpec}),
	"secrets.hashicorp.com/v1beta1 VaultDynamicSecret":           k8sResource(k8sFields{"spec": vsoDynamicSecretSpec}),
	"generators.external-secrets.io/v1alpha1 VaultDynamicSecret": k8sResource(k8sFields{"spec": esoGeneratorSpec}),
	"external-secrets.io/v1 ExternalSecret":                      k8sResource(k8sFields{"spec": esoExternalSecretSpec}),
	"secrets-store.csi.x-k8s.io/v1 SecretProviderClass":          k8sResource(k8sFields{"spec": csiSecretProviderClassSpec}),
}

// k8sHelmValues are the Helm values files, by file name, with the values
// their charts declare (each chart's values.yaml) at the levels they use.
var k8sHelmValues = map[string]*k8sShape{
	// hashicorp/vault-secrets-operator chart 1.4.1.
	"vso-helm-values.yaml": k8sObj(k8sFields{
		"controller": k8sObj(k8sFields{
			"replicas": k8sAny, "strategy": k8sAny, "hostAliases": k8sAny, "nodeSelector": k8sAny,
			"tolerations": k8sAny, "affinity": k8sAny, "rbac": k8sAny, "kubeRbacProxy": k8sAny,
			"imagePullSecrets": k8sAny, "extraLabels": k8sAny, "annotations": k8sAny,
			"podSecurityContext": k8sAny, "securityContext": k8sAny, "controllerConfigMapYaml": k8sAny,
			"kubernetesClusterDomain": k8sAny, "terminationGracePeriodSeconds": k8sAny,
			"preDeleteHookTimeoutSeconds": k8sAny,
			"manager": k8sObj(k8sFields{
				"image": k8sAny, "logging": k8sAny, "globalTransformationOptions": k8sAny,
				"globalVaultAuthOptions": k8sAny, "backoffOnSecretSourceError": k8sAny,
				"maxConcurrentReconciles": k8sAny, "extraEnv": k8sAny, "extraArgs": k8sAny,
				"resources": k8sAny,
				"clientCache": k8sObj(k8sFields{
					"persistenceModel": k8sAny, "cacheSize": k8sAny,
					"storageEncryption": k8sObj(k8sFields{
						"enabled": k8sAny, "vaultConnectionRef": k8sAny, "keyName": k8sAny,
						"transitMount": k8sAny, "namespace": k8sAny, "method": k8sAny, "mount": k8sAny,
						"kubernetes": k8sObj(k8sFields{
							"role": k8sAny, "serviceAccount": k8sAny, "tokenAudiences": k8sAny,
						}),
						"jwt": k8sAny, "appRole": k8sAny, "aws": k8sAny, "gcp": k8sAny,
						"params": k8sAny, "headers": k8sAny,
					}),
				}),
			}),
		}),
		"metricsService": k8sAny,
		"defaultVaultConnection": k8sObj(k8sFields{
			"enabled": k8sAny, "address": k8sAny, "caCertSecret": k8sAny,
			"tlsServerName": k8sAny, "skipTLSVerify": k8sAny, "headers": k8sAny,
		}),
		"defaultAuthMethod": k8sAny, "telemetry": k8sAny, "hooks": k8sAny, "tests": k8sAny,
	}),
	// kubernetes-sigs secrets-store-csi-driver chart (1.x).
	"csi-driver-helm-values.yaml": k8sObj(k8sFields{
		"linux": k8sAny, "windows": k8sAny, "logVerbosity": k8sAny, "logFormatJSON": k8sAny,
		"livenessProbe": k8sAny, "maxCallRecvMsgSize": k8sAny, "rbac": k8sAny,
		"syncSecret":           k8sObj(k8sFields{"enabled": k8sAny}),
		"enableSecretRotation": k8sAny, "rotationPollInterval": k8sAny,
		"filteredWatchSecret": k8sAny, "providerHealthCheck": k8sAny,
		"providerHealthCheckInterval": k8sAny, "imagePullSecrets": k8sAny, "tokenRequests": k8sAny,
	}),
	// hashicorp/vault chart: the injector and the CSI provider.
	"vault-helm-values.yaml": k8sObj(k8sFields{
		"global": k8sObj(k8sFields{
			"enabled": k8sAny, "namespace": k8sAny, "imagePullSecrets": k8sAny,
			"tlsDisable": k8sAny, "externalVaultAddr": k8sAny, "openshift": k8sAny,
			"psp": k8sAny, "serverTelemetry": k8sAny,
		}),
		"injector": k8sObj(k8sFields{
			"enabled": k8sAny, "replicas": k8sAny, "port": k8sAny, "leaderElector": k8sAny,
			"metrics": k8sAny, "externalVaultAddr": k8sAny, "image": k8sAny, "agentImage": k8sAny,
			"agentDefaults": k8sAny, "authPath": k8sAny, "logLevel": k8sAny, "logFormat": k8sAny,
			"revokeOnShutdown": k8sAny, "namespaceSelector": k8sAny, "objectSelector": k8sAny,
			"failurePolicy": k8sAny, "certs": k8sAny, "resources": k8sAny,
			"extraEnvironmentVars": k8sAny, "affinity": k8sAny, "tolerations": k8sAny,
			"nodeSelector": k8sAny, "priorityClassName": k8sAny, "annotations": k8sAny,
			"extraLabels": k8sAny, "hostNetwork": k8sAny, "service": k8sAny,
		}),
		"server": k8sObj(k8sFields{
			"enabled": k8sAny, "image": k8sAny, "resources": k8sAny, "ha": k8sAny,
			"standalone": k8sAny, "dev": k8sAny, "dataStorage": k8sAny, "auditStorage": k8sAny,
			"service": k8sAny, "ingress": k8sAny, "extraEnvironmentVars": k8sAny,
		}),
		"ui": k8sAny, "serverTelemetry": k8sAny,
		"csi": k8sObj(k8sFields{
			"enabled": k8sAny, "image": k8sAny, "volumes": k8sAny, "volumeMounts": k8sAny,
			"resources": k8sAny, "hmacSecretName": k8sAny, "daemonSet": k8sAny, "pod": k8sAny,
			"priorityClassName": k8sAny, "serviceAccount": k8sAny, "readinessProbe": k8sAny,
			"livenessProbe": k8sAny, "debug": k8sAny, "extraArgs": k8sAny,
			"agent": k8sObj(k8sFields{
				"enabled": k8sAny, "extraArgs": k8sAny, "image": k8sAny, "logFormat": k8sAny,
				"logLevel": k8sAny, "resources": k8sAny,
			}),
		}),
	}),
}

// injectorAnnotations are the pod annotations of the Agent injector
// (vault-k8s 1.4.x, agent-inject/agent/annotations.go), and
// injectorAnnotationPrefixes those that take a secret's name after them.
var (
	injectorAnnotations = map[string]bool{
		"agent-inject": true, "agent-inject-status": true, "agent-inject-containers": true,
		"agent-inject-default-template": true, "agent-inject-token": true, "agent-image": true,
		"agent-request-namespace": true, "agent-init-first": true, "agent-pre-populate": true,
		"agent-pre-populate-only": true, "agent-configmap": true, "agent-extra-secret": true,
		"agent-limits-cpu": true, "agent-limits-mem": true, "agent-limits-ephemeral": true,
		"agent-requests-cpu": true, "agent-requests-mem": true, "agent-requests-ephemeral": true,
		"agent-revoke-on-shutdown": true, "agent-revoke-grace": true, "namespace": true,
		"agent-run-as-user": true, "agent-run-as-group": true, "agent-run-as-same-user": true,
		"agent-share-process-namespace": true, "agent-set-security-context": true,
		"agent-service-account-token-volume-name": true, "service": true, "proxy-address": true,
		"tls-skip-verify": true, "tls-secret": true, "tls-server-name": true, "ca-cert": true,
		"ca-key": true, "client-cert": true, "client-key": true, "client-max-retries": true,
		"client-timeout": true, "go-max-procs": true, "log-level": true, "log-format": true,
		"role": true, "auth-type": true, "auth-path": true, "secret-volume-path": true,
		"agent-cache-enable": true, "agent-cache-use-auto-auth-token": true,
		"agent-cache-listener-port": true, "agent-cache-exit-on-err": true,
		"agent-copy-volume-mounts": true, "template-config-exit-on-retry-failure": true,
		"template-static-secret-render-interval": true, "template-max-connections-per-host": true,
		"agent-enable-quit": true, "auth-min-backoff": true, "auth-max-backoff": true,
		"agent-disable-idle-connections": true, "agent-disable-keep-alives": true,
		"agent-json-patch": true, "agent-init-json-patch": true, "agent-auto-auth-exit-on-err": true,
		"agent-metrics-listener-port": true,
	}
	injectorAnnotationPrefixes = []string{
		"agent-inject-secret-", "agent-inject-template-file-", "agent-inject-template-",
		"agent-inject-file-", "agent-inject-perms-", "agent-inject-command-",
		"preserve-secret-case-", "error-on-missing-key-", "auth-config-", "agent-telemetry-",
		"secret-volume-path-",
	}
)

const injectorAnnotationDomain = "vault.hashicorp.com/"

// k8sDoc is one YAML document of an example file.
type k8sDoc struct {
	file  string // base name
	index int    // 1-based, within the file
	obj   map[string]any
}

func (d k8sDoc) String() string { return fmt.Sprintf("%s (document %d)", d.file, d.index) }

func (d k8sDoc) typeKey() string {
	return fmt.Sprintf("%v %v", d.obj["apiVersion"], d.obj["kind"])
}

func (d k8sDoc) name() string      { return k8sStr(k8sGet(d.obj, "metadata", "name")) }
func (d k8sDoc) namespace() string { return k8sStr(k8sGet(d.obj, "metadata", "namespace")) }

// k8sSplitDocuments splits a YAML stream at its "---" lines.
func k8sSplitDocuments(data []byte) [][]byte {
	var docs [][]byte
	var cur []string
	for line := range strings.SplitSeq(string(data), "\n") {
		if strings.TrimRight(line, " \t\r") == "---" {
			docs = append(docs, []byte(strings.Join(cur, "\n")))
			cur = nil
			continue
		}
		cur = append(cur, line)
	}
	return append(docs, []byte(strings.Join(cur, "\n")))
}

// k8sParse parses the documents of one example file; comment-only
// documents are skipped.
func k8sParse(file string, data []byte) ([]k8sDoc, error) {
	var out []k8sDoc
	for i, raw := range k8sSplitDocuments(data) {
		var v any
		if err := yaml.UnmarshalStrict(raw, &v); err != nil {
			return nil, fmt.Errorf("%s (document %d): %v", file, i+1, err)
		}
		if v == nil {
			continue
		}
		obj, ok := v.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("%s (document %d): a %T, not a mapping", file, i+1, v)
		}
		out = append(out, k8sDoc{file: file, index: i + 1, obj: obj})
	}
	return out, nil
}

func k8sLoadExamples(t *testing.T) (map[string][]byte, []k8sDoc) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(k8sExamplesDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no %s/*.yaml", k8sExamplesDir)
	}
	raw := map[string][]byte{}
	var docs []k8sDoc
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		raw[filepath.Base(f)] = data
		d, err := k8sParse(filepath.Base(f), data)
		if err != nil {
			t.Fatal(err)
		}
		if len(d) == 0 {
			t.Errorf("%s: no document", f)
		}
		docs = append(docs, d...)
	}
	return raw, docs
}

// k8sCheckFields walks v against shape and returns every key that shape
// does not declare, by its path.
func k8sCheckFields(path string, v any, shape *k8sShape) []string {
	if shape == nil {
		return nil
	}
	if shape.list {
		items, ok := v.([]any)
		if !ok {
			return []string{fmt.Sprintf("%s: a %s, not a list", path, k8sTypeName(v))}
		}
		var problems []string
		for i, item := range items {
			problems = append(problems, k8sCheckFields(fmt.Sprintf("%s[%d]", path, i), item, &k8sShape{fields: shape.fields})...)
		}
		return problems
	}
	m, ok := v.(map[string]any)
	if !ok {
		return []string{fmt.Sprintf("%s: a %s, not a mapping", path, k8sTypeName(v))}
	}
	var problems []string
	for _, k := range k8sSortedKeys(m) {
		sub, known := shape.fields[k]
		p := k
		if path != "" {
			p = path + "." + k
		}
		if !known {
			problems = append(problems, fmt.Sprintf("%s: unknown field %q (declared here: %s)", p, k, strings.Join(k8sSortedKeys(shape.fields), ", ")))
			continue
		}
		problems = append(problems, k8sCheckFields(p, m[k], sub)...)
	}
	return problems
}

// k8sCheckDoc checks one document against the tables: its kind's fields,
// the injector's annotations, the CSI provider's objects; a document
// without a kind must be a Helm values file the tables know.
func k8sCheckDoc(d k8sDoc) []string {
	if _, hasKind := d.obj["kind"]; !hasKind {
		shape, ok := k8sHelmValues[d.file]
		if !ok {
			return []string{"no kind, and not a Helm values file of the tables"}
		}
		return k8sCheckFields("", d.obj, shape)
	}
	shape, ok := k8sKinds[d.typeKey()]
	if !ok {
		return []string{fmt.Sprintf("kind %q is not one the tables know", d.typeKey())}
	}
	problems := k8sCheckFields("", d.obj, shape)
	for _, meta := range []any{k8sGet(d.obj, "metadata"), k8sGet(d.obj, "spec", "template", "metadata")} {
		annotations, _ := k8sGet(meta, "annotations").(map[string]any)
		for _, k := range k8sSortedKeys(annotations) {
			name, ok := strings.CutPrefix(k, injectorAnnotationDomain)
			if !ok {
				continue
			}
			if !injectorAnnotations[name] && !k8sHasAnyPrefix(name, injectorAnnotationPrefixes) {
				problems = append(problems, fmt.Sprintf("annotation %q is not one the Agent injector declares", k))
			}
		}
	}
	if d.typeKey() == "secrets-store.csi.x-k8s.io/v1 SecretProviderClass" {
		objects, err := csiParseObjects(d)
		if err != nil {
			problems = append(problems, err.Error())
		} else {
			problems = append(problems, k8sCheckFields("spec.parameters.objects", objects, csiObjects)...)
		}
	}
	return problems
}

// csiParseObjects parses the provider's "objects" parameter, a YAML list
// in a string.
func csiParseObjects(d k8sDoc) ([]any, error) {
	s, ok := k8sGet(d.obj, "spec", "parameters", "objects").(string)
	if !ok {
		return nil, fmt.Errorf("spec.parameters.objects: not a string")
	}
	var objects []any
	if err := yaml.UnmarshalStrict([]byte(s), &objects); err != nil {
		return nil, fmt.Errorf("spec.parameters.objects: %v", err)
	}
	return objects, nil
}

func TestKubernetesExamplesUseOnlyDeclaredFields(t *testing.T) {
	_, docs := k8sLoadExamples(t)
	kinds := map[string]int{}
	for _, d := range docs {
		for _, p := range k8sCheckDoc(d) {
			t.Errorf("%s: %s", d, p)
		}
		if k, ok := d.obj["kind"]; ok {
			kinds[fmt.Sprint(k)]++
		} else {
			kinds["Helm values"]++
		}
	}
	t.Logf("%d documents checked: %v", len(docs), kinds)
}

// TestKubernetesFieldCheckCatchesTypos proves that the check above fails on
// a misspelt field in each consumer's example.
func TestKubernetesFieldCheckCatchesTypos(t *testing.T) {
	raw, _ := k8sLoadExamples(t)
	cases := []struct{ file, old, new, want string }{
		{"vso.yaml", "  renewalPercent: 67", "  renewalPercentage: 67", `unknown field "renewalPercentage"`},
		{"vso.yaml", "  vaultAuthRef: ermeo-vso", "  vaultAuth: ermeo-vso", `unknown field "vaultAuth"`},
		{"vso.yaml", "    serviceAccount: ermeo-vso", "    serviceAccountName: ermeo-vso", `unknown field "serviceAccountName"`},
		{"vso-helm-values.yaml", "      persistenceModel:", "      persistence:", `unknown field "persistence"`},
		{"eso.yaml", "  refreshInterval: 4m", "  refresh: 4m", `unknown field "refresh"`},
		{"eso.yaml", "        mountPath: kubernetes", "        mount: kubernetes", `unknown field "mount"`},
		{"csi.yaml", "        secretPath: ermeo/creds/app", "        path: ermeo/creds/app", `unknown field "path"`},
		{"csi.yaml", "    roleName: ermeo-app-csi", "    role: ermeo-app-csi", `unknown field "role"`},
		{"csi-driver-helm-values.yaml", "rotationPollInterval:", "rotationInterval:", `unknown field "rotationInterval"`},
		{"injector.yaml", "vault.hashicorp.com/agent-inject-secret-ermeo-token", "vault.hashicorp.com/agent-inject-secrets-ermeo-token", "not one the Agent injector declares"},
	}
	for _, c := range cases {
		data, ok := raw[c.file]
		if !ok || !strings.Contains(string(data), c.old) {
			t.Errorf("%s: no %q to misspell", c.file, c.old)
			continue
		}
		docs, err := k8sParse(c.file, []byte(strings.Replace(string(data), c.old, c.new, 1)))
		if err != nil {
			t.Errorf("%s with %q: %v", c.file, c.new, err)
			continue
		}
		var problems []string
		for _, d := range docs {
			problems = append(problems, k8sCheckDoc(d)...)
		}
		if !strings.Contains(strings.Join(problems, "\n"), c.want) {
			t.Errorf("%s with %q: the check found %q, want %s", c.file, strings.TrimSpace(c.new), problems, c.want)
		}
	}
}

// TestKubernetesExamplesFitTheLeases checks what docs/kubernetes.md asks of
// each consumer, and that the examples' references resolve.
func TestKubernetesExamplesFitTheLeases(t *testing.T) {
	raw, docs := k8sLoadExamples(t)
	doc, err := os.ReadFile(k8sDocFile)
	if err != nil {
		t.Fatal(err)
	}
	byKind := map[string]map[string]k8sDoc{} // type key -> namespace/name -> doc
	for _, d := range docs {
		if _, ok := d.obj["kind"]; !ok {
			continue
		}
		if byKind[d.typeKey()] == nil {
			byKind[d.typeKey()] = map[string]k8sDoc{}
		}
		byKind[d.typeKey()][d.namespace()+"/"+d.name()] = d
	}
	// ref resolves a reference "name" or "namespace/name" from d's namespace.
	ref := func(d k8sDoc, typeKey, r string) bool {
		key := d.namespace() + "/" + r
		if strings.Contains(r, "/") {
			key = r
		}
		_, ok := byKind[typeKey][key]
		return r != "" && ok
	}
	const (
		vsoConnection = "secrets.hashicorp.com/v1beta1 VaultConnection"
		vsoAuth       = "secrets.hashicorp.com/v1beta1 VaultAuth"
		vsoDynamic    = "secrets.hashicorp.com/v1beta1 VaultDynamicSecret"
		esoGenerator  = "generators.external-secrets.io/v1alpha1 VaultDynamicSecret"
		esoExternal   = "external-secrets.io/v1 ExternalSecret"
		csiClass      = "secrets-store.csi.x-k8s.io/v1 SecretProviderClass"
		serviceAcct   = "v1 ServiceAccount"
		deployment    = "apps/v1 Deployment"
	)
	for kind, want := range map[string]int{vsoConnection: 1, vsoAuth: 2, vsoDynamic: 1, esoGenerator: 1, esoExternal: 1, csiClass: 1} {
		if got := len(byKind[kind]); got < want {
			t.Errorf("%d %s in the examples, want at least %d", got, kind, want)
		}
	}

	// tokenSecrets are the Secrets the operators write the token to, by
	// namespace/name; a Deployment must mount each whole.
	tokenSecrets := map[string]string{}

	// Vault Secrets Operator.
	for _, d := range byKind[vsoAuth] {
		if r := k8sStr(k8sGet(d.obj, "spec", "vaultConnectionRef")); !ref(d, vsoConnection, r) {
			t.Errorf("%s: vaultConnectionRef %q names no VaultConnection of the examples", d, r)
		}
		switch method := k8sStr(k8sGet(d.obj, "spec", "method")); method {
		case "kubernetes":
			if k8sStr(k8sGet(d.obj, "spec", "kubernetes", "role")) == "" {
				t.Errorf("%s: no kubernetes.role", d)
			}
			if sa := k8sStr(k8sGet(d.obj, "spec", "kubernetes", "serviceAccount")); !ref(d, serviceAcct, sa) {
				t.Errorf("%s: kubernetes.serviceAccount %q is no ServiceAccount of its namespace in the examples", d, sa)
			}
		case "appRole":
			if k8sStr(k8sGet(d.obj, "spec", "appRole", "roleId")) == "" || k8sStr(k8sGet(d.obj, "spec", "appRole", "secretRef")) == "" {
				t.Errorf("%s: appRole needs roleId and secretRef", d)
			}
		default:
			t.Errorf("%s: method %q, want kubernetes or appRole as the page shows", d, method)
		}
	}
	for _, d := range byKind[vsoDynamic] {
		if r := k8sStr(k8sGet(d.obj, "spec", "vaultAuthRef")); !ref(d, vsoAuth, r) {
			t.Errorf("%s: vaultAuthRef %q names no VaultAuth of the examples", d, r)
		}
		if m := k8sStr(k8sGet(d.obj, "spec", "mount")); m != k8sMount {
			t.Errorf("%s: mount %q, want %q, the page's", d, m, k8sMount)
		}
		if p := k8sStr(k8sGet(d.obj, "spec", "path")); !k8sCredsPath.MatchString(p) {
			t.Errorf("%s: path %q is not creds/<name>", d, p)
		}
		percent := float64(vsoDefaultRenewalPercent)
		if v, ok := k8sGet(d.obj, "spec", "renewalPercent").(float64); ok {
			percent = v
		}
		if percent > vsoMaxRenewalPercent || percent < 0 {
			t.Errorf("%s: renewalPercent %v, want 0 to %d: VSO acts up to 10%% of a lease later", d, percent, vsoMaxRenewalPercent)
		}
		if k8sGet(d.obj, "spec", "rolloutRestartTargets") != nil {
			t.Errorf("%s: rolloutRestartTargets are restarted on every full read of creds", d)
		}
		if v, _ := k8sGet(d.obj, "spec", "revoke").(bool); v {
			t.Errorf("%s: revoke does nothing at Ermeo and needs sys/leases/revoke", d)
		}
		tokenSecrets[d.namespace()+"/"+k8sStr(k8sGet(d.obj, "spec", "destination", "name"))] = d.String()
	}
	if vals, err := k8sParse("vso-helm-values.yaml", raw["vso-helm-values.yaml"]); err != nil || len(vals) != 1 {
		t.Errorf("vso-helm-values.yaml: %v", err)
	} else {
		v := vals[0].obj
		if m := k8sStr(k8sGet(v, "controller", "manager", "clientCache", "persistenceModel")); m != "direct-encrypted" {
			t.Errorf("vso-helm-values.yaml: clientCache.persistenceModel %q, want direct-encrypted", m)
		}
		if on, _ := k8sGet(v, "controller", "manager", "clientCache", "storageEncryption", "enabled").(bool); !on {
			t.Errorf("vso-helm-values.yaml: clientCache.storageEncryption is not enabled")
		}
	}

	// External Secrets Operator.
	for _, d := range byKind[esoGenerator] {
		if p := k8sStr(k8sGet(d.obj, "spec", "path")); !k8sFullCredsPath.MatchString(p) {
			t.Errorf("%s: path %q is not %s/creds/<name>", d, p, k8sMount)
		}
		if m := k8sStr(k8sGet(d.obj, "spec", "method")); m != "" && m != "GET" {
			t.Errorf("%s: method %q, want GET (a read)", d, m)
		}
		if sa := k8sStr(k8sGet(d.obj, "spec", "provider", "auth", "kubernetes", "serviceAccountRef", "name")); sa != "" && !ref(d, serviceAcct, sa) {
			t.Errorf("%s: serviceAccountRef %q is no ServiceAccount of its namespace in the examples", d, sa)
		}
	}
	for _, d := range byKind[esoExternal] {
		interval, err := time.ParseDuration(k8sStr(k8sGet(d.obj, "spec", "refreshInterval")))
		if err != nil {
			t.Errorf("%s: refreshInterval: %v (ESO's default is 1h)", d, err)
		} else if interval <= 0 || interval > k8sMinTTL/2 {
			t.Errorf("%s: refreshInterval %v, want more than 0 and at most min_ttl/2 = %v", d, interval, k8sMinTTL/2)
		}
		if p := k8sStr(k8sGet(d.obj, "spec", "refreshPolicy")); p != "" && p != "Periodic" {
			t.Errorf("%s: refreshPolicy %q reads creds only once", d, p)
		}
		from, _ := k8sGet(d.obj, "spec", "dataFrom").([]any)
		if len(from) == 0 {
			t.Errorf("%s: no dataFrom", d)
		}
		for _, f := range from {
			g := k8sGet(f, "sourceRef", "generatorRef")
			if k8sStr(k8sGet(g, "apiVersion")) != "generators.external-secrets.io/v1alpha1" || k8sStr(k8sGet(g, "kind")) != "VaultDynamicSecret" {
				t.Errorf("%s: dataFrom %v is not a VaultDynamicSecret generator", d, g)
			} else if n := k8sStr(k8sGet(g, "name")); !ref(d, esoGenerator, n) {
				t.Errorf("%s: generatorRef %q names no generator of its namespace in the examples", d, n)
			}
		}
		tokenSecrets[d.namespace()+"/"+k8sStr(k8sGet(d.obj, "spec", "target", "name"))] = d.String()
	}

	// The Secrets Store CSI driver.
	for _, d := range byKind[csiClass] {
		if p := k8sStr(k8sGet(d.obj, "spec", "provider")); p != "vault" {
			t.Errorf("%s: provider %q, want vault", d, p)
		}
		if k8sGet(d.obj, "spec", "parameters", "vaultAddress") != nil {
			t.Errorf("%s: vaultAddress bypasses the provider's Vault Agent sidecar: one new lease per poll", d)
		}
		if k8sStr(k8sGet(d.obj, "spec", "parameters", "roleName")) == "" {
			t.Errorf("%s: no roleName", d)
		}
		objects, err := csiParseObjects(d)
		if err != nil || len(objects) == 0 {
			t.Errorf("%s: objects: %v", d, err)
		}
		for _, o := range objects {
			if p := k8sStr(k8sGet(o, "secretPath")); !k8sFullCredsPath.MatchString(p) {
				t.Errorf("%s: secretPath %q is not %s/creds/<name>", d, p, k8sMount)
			}
			if k := k8sStr(k8sGet(o, "secretKey")); k != "access_token" {
				t.Errorf("%s: secretKey %q, want access_token", d, k)
			}
			if m := k8sStr(k8sGet(o, "method")); m != "" && m != "GET" {
				t.Errorf("%s: method %q, want GET", d, m)
			}
		}
	}
	if vals, err := k8sParse("csi-driver-helm-values.yaml", raw["csi-driver-helm-values.yaml"]); err != nil || len(vals) != 1 {
		t.Errorf("csi-driver-helm-values.yaml: %v", err)
	} else {
		v := vals[0].obj
		if on, _ := v["enableSecretRotation"].(bool); !on {
			t.Errorf("csi-driver-helm-values.yaml: enableSecretRotation is not true: a pod keeps its first token")
		}
		s := k8sStr(v["rotationPollInterval"])
		poll, err := time.ParseDuration(s)
		if err != nil || poll <= 0 || poll >= k8sMinTTL/2 {
			t.Errorf("csi-driver-helm-values.yaml: rotationPollInterval %q (%v), want below min_ttl/2 = %v", s, err, k8sMinTTL/2)
		}
		if flag := "--rotation-poll-interval=" + s; !strings.Contains(string(doc), flag) {
			t.Errorf("%s does not document %s", k8sDocFile, flag)
		}
	}
	if vals, err := k8sParse("vault-helm-values.yaml", raw["vault-helm-values.yaml"]); err != nil || len(vals) != 1 {
		t.Errorf("vault-helm-values.yaml: %v", err)
	} else {
		for _, p := range [][]string{{"injector", "enabled"}, {"csi", "enabled"}, {"csi", "agent", "enabled"}} {
			if on, _ := k8sGet(vals[0].obj, p...).(bool); !on {
				t.Errorf("vault-helm-values.yaml: %s is not true", strings.Join(p, "."))
			}
		}
	}

	// The Deployments: the injector's annotations, and the token volumes.
	injected := 0
	for _, d := range byKind[deployment] {
		pod := k8sGet(d.obj, "spec", "template")
		annotations, _ := k8sGet(pod, "metadata", "annotations").(map[string]any)
		if on := k8sStr(annotations[injectorAnnotationDomain+"agent-inject"]); on == "true" {
			injected++
			if v, ok := annotations[injectorAnnotationDomain+"agent-pre-populate-only"]; ok {
				t.Errorf("%s: agent-pre-populate-only %v: the token is rendered once and never again", d, v)
			}
			if k8sStr(annotations[injectorAnnotationDomain+"role"]) == "" {
				t.Errorf("%s: no vault.hashicorp.com/role", d)
			}
			if sa := k8sStr(k8sGet(pod, "spec", "serviceAccountName")); !ref(d, serviceAcct, sa) {
				t.Errorf("%s: serviceAccountName %q is no ServiceAccount of its namespace in the examples", d, sa)
			}
			secrets := 0
			for _, k := range k8sSortedKeys(annotations) {
				name, ok := strings.CutPrefix(k, injectorAnnotationDomain+"agent-inject-secret-")
				if !ok {
					continue
				}
				secrets++
				path := k8sStr(annotations[k])
				if !k8sFullCredsPath.MatchString(path) {
					t.Errorf("%s: %s reads %q, not %s/creds/<name>", d, k, path, k8sMount)
				}
				tmpl := k8sStr(annotations[injectorAnnotationDomain+"agent-inject-template-"+name])
				if !strings.Contains(tmpl, fmt.Sprintf("secret %q", path)) || !strings.Contains(tmpl, ".Data.access_token") {
					t.Errorf("%s: the template of %q does not render .Data.access_token of %s: %q", d, name, path, tmpl)
				}
			}
			if secrets == 0 {
				t.Errorf("%s: agent-inject without agent-inject-secret-*", d)
			}
		}
		volumes, _ := k8sGet(pod, "spec", "volumes").([]any)
		tokenVolumes := map[string]bool{}
		for _, v := range volumes {
			name := k8sStr(k8sGet(v, "name"))
			if s := k8sStr(k8sGet(v, "secret", "secretName")); s != "" {
				if _, ok := tokenSecrets[d.namespace()+"/"+s]; ok {
					tokenVolumes[name] = true
					delete(tokenSecrets, d.namespace()+"/"+s)
				}
			}
			if k8sGet(v, "csi") != nil {
				tokenVolumes[name] = true
				if drv := k8sStr(k8sGet(v, "csi", "driver")); drv != "secrets-store.csi.k8s.io" {
					t.Errorf("%s: CSI driver %q, want secrets-store.csi.k8s.io", d, drv)
				}
				if c := k8sStr(k8sGet(v, "csi", "volumeAttributes", "secretProviderClass")); !ref(d, csiClass, c) {
					t.Errorf("%s: secretProviderClass %q names no SecretProviderClass of its namespace in the examples", d, c)
				}
			}
		}
		containers, _ := k8sGet(pod, "spec", "containers").([]any)
		for _, c := range containers {
			mounts, _ := k8sGet(c, "volumeMounts").([]any)
			for _, m := range mounts {
				if tokenVolumes[k8sStr(k8sGet(m, "name"))] && k8sGet(m, "subPath") != nil {
					t.Errorf("%s: a subPath mount of the token volume %q is never updated", d, k8sStr(k8sGet(m, "name")))
				}
			}
		}
	}
	if injected == 0 {
		t.Errorf("no Deployment with vault.hashicorp.com/agent-inject in the examples")
	}
	for s, by := range tokenSecrets {
		t.Errorf("the Secret %s written by %s is mounted by no Deployment of the examples", s, by)
	}
}

// TestKubernetesDocLinksItsExamples checks that docs/kubernetes.md links
// every example, that its links and those of the examples' comments
// resolve, and that the README links the page.
func TestKubernetesDocLinksItsExamples(t *testing.T) {
	doc, err := os.ReadFile(k8sDocFile)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := k8sLoadExamples(t)
	for _, f := range k8sSortedKeys(raw) {
		if !strings.Contains(string(doc), "(../examples/kubernetes/"+f+")") {
			t.Errorf("%s does not link examples/kubernetes/%s", k8sDocFile, f)
		}
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "(docs/kubernetes.md)") {
		t.Errorf("README.md does not link docs/kubernetes.md")
	}

	link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	inFence := false
	links := 0
	for _, line := range strings.Split(string(doc), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			inFence = !inFence
			continue
		}
		if inFence {
			continue
		}
		for _, m := range link.FindAllStringSubmatch(line, -1) {
			target := m[1]
			if strings.HasPrefix(target, "http://") || strings.HasPrefix(target, "https://") {
				continue
			}
			links++
			file, anchor, _ := strings.Cut(target, "#")
			path := k8sDocFile
			if file != "" {
				path = filepath.Join(filepath.Dir(k8sDocFile), file)
			}
			if _, err := os.Stat(path); err != nil {
				t.Errorf("%s links %s: %v", k8sDocFile, target, err)
				continue
			}
			if anchor != "" && !k8sHasAnchor(t, path, anchor) {
				t.Errorf("%s links %s: no heading #%s in %s", k8sDocFile, target, anchor, path)
			}
		}
	}
	// The examples' comments point at sections of the page.
	section := regexp.MustCompile(`docs/kubernetes\.md#([A-Za-z0-9-]+)`)
	for _, f := range k8sSortedKeys(raw) {
		for _, m := range section.FindAllStringSubmatch(string(raw[f]), -1) {
			links++
			if !k8sHasAnchor(t, k8sDocFile, m[1]) {
				t.Errorf("%s points at %s#%s, which has no such heading", f, k8sDocFile, m[1])
			}
		}
	}
	t.Logf("%d local links checked", links)
}

// k8sHasAnchor reports whether the Markdown file has a heading whose
// GitHub anchor is anchor.
func k8sHasAnchor(t *testing.T, path, anchor string) bool {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	inFence := false
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			inFence = !inFence
			continue
		}
		if !inFence && strings.HasPrefix(line, "#") && k8sSlug(strings.TrimLeft(line, "# ")) == anchor {
			return true
		}
	}
	return false
}

// k8sSlug is GitHub's anchor of a heading: lower case, punctuation other
// than hyphens and underscores dropped, spaces to hyphens.
func k8sSlug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
			b.WriteRune(r)
		}
	}
	return b.String()
}

// k8sGet follows keys through nested mappings; nil when one is missing.
func k8sGet(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func k8sStr(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	return ""
}

func k8sTypeName(v any) string {
	switch v.(type) {
	case map[string]any:
		return "mapping"
	case []any:
		return "list"
	case nil:
		return "null"
	default:
		return fmt.Sprintf("%T", v)
	}
}

func k8sHasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) && len(s) > len(p) {
			return true
		}
	}
	return false
}

func k8sSortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
