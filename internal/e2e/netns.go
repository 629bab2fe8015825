package e2e

// Network namespaces for a cluster whose nodes can be cut off from each
// other for real (ClusterOptions.Namespaced). Linux only, as root; every
// change goes through the ip command (iproute2).
//
// Each node runs in a network namespace of its own with two veth links:
//
//	clu  to the "cluster" bridge, 10.213.<x>.0/24: cluster_addr, so Raft
//	     and request forwarding between nodes;
//	svc  to the "service" bridge, 10.214.<x>.0/24: api_addr, which the
//	     test process, the readers and retry_join use, and the way to
//	     whatever the test serves at HostIP (the fake Ermeo).
//
// Both bridges are in the root namespace; the service bridge has HostIP,
// 10.214.<x>.1. Cutting a node's cluster link partitions it from Raft while
// it can still reach Ermeo and its clients can still reach it: the leader
// that believes it still leads, and whose plugin can still spend refresh
// tokens. <x> is chosen per run among the subnets no interface of this
// machine uses; every name carries the run's random id, so that concurrent
// runs never share a namespace, a link or a bridge.

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	mrand "math/rand"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Network is the namespaces, links and bridges of one namespaced cluster.
type Network struct {
	// ID is the run's random id, in every name below.
	ID string
	// ClusterBridge and ServiceBridge are the bridges' names in the root
	// namespace.
	ClusterBridge, ServiceBridge string
	// HostIP is the root namespace's address on the service bridge, which
	// every node reaches: where a test serves what the nodes call.
	HostIP string
	Nodes  []*NodeNet

	mu      sync.Mutex
	removed bool
}

// NodeNet is one node's namespace and addresses.
type NodeNet struct {
	// NS is the namespace's name (ip netns).
	NS string
	// ServiceIP carries api_addr; ClusterIP carries cluster_addr.
	ServiceIP, ClusterIP string
	// hostClu and hostSvc are the root namespace's ends of the node's links.
	hostClu, hostSvc string

	mu  sync.Mutex
	cut string // "", "cluster" or "full"
}

// The links' names inside every node's namespace.
const (
	nsClusterLink = "clu"
	nsServiceLink = "svc"
)

// netnsLock serializes, between the test processes of this machine, the
// choice of a free subnet and the creation of the bridges that take it.
var netnsLockPath = filepath.Join(os.TempDir(), "ermeo-e2e-netns.lock")

// NewNetwork creates the bridges and one namespace per node, linked to both,
// with lo up in each. On error it removes whatever it created.
func NewNetwork(nodes int) (nw *Network, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("namespaced nodes need root (ip netns, veth, bridges)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("namespaced nodes need the ip command (iproute2): %w", err)
	}
	nw = &Network{ID: randomHex(3)}
	nw.ClusterBridge, nw.ServiceBridge = "ebc"+nw.ID, "ebs"+nw.ID // 9 chars, under IFNAMSIZ
	defer func() {
		if err != nil {
			nw.Remove()
			nw = nil
		}
	}()

	lock, err := os.OpenFile(netnsLockPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nw, err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return nw, err
	}
	x, err := freeSubnet()
	if err != nil {
		return nw, err
	}
	nw.HostIP = fmt.Sprintf("10.214.%d.1", x)
	if err := ipCmd("link", "add", nw.ClusterBridge, "type", "bridge"); err != nil {
		return nw, err
	}
	if err := ipCmd("link", "add", nw.ServiceBridge, "type", "bridge"); err != nil {
		return nw, err
	}
	if err := ipCmd("addr", "add", nw.HostIP+"/24", "dev", nw.ServiceBridge); err != nil {
		return nw, err
	}
	for _, br := range []string{nw.ClusterBridge, nw.ServiceBridge} {
		if err := ipCmd("link", "set", br, "up"); err != nil {
			return nw, err
		}
	}
	_ = syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)

	for i := 0; i < nodes; i++ {
		n := &NodeNet{
			NS:        fmt.Sprintf("ermeo-%s-node%d", nw.ID, i+1),
			ServiceIP: fmt.Sprintf("10.214.%d.%d", x, 11+i),
			ClusterIP: fmt.Sprintf("10.213.%d.%d", x, 11+i),
			hostClu:   fmt.Sprintf("vc%sn%d", nw.ID, i+1),
			hostSvc:   fmt.Sprintf("vs%sn%d", nw.ID, i+1),
		}
		nw.Nodes = append(nw.Nodes, n)
		if err := ipCmd("netns", "add", n.NS); err != nil {
			return nw, err
		}
		if err := ipCmd("-n", n.NS, "link", "set", "lo", "up"); err != nil {
			return nw, err
		}
		for _, l := range []struct{ host, inNS, bridge, ip string }{
			{n.hostClu, nsClusterLink, nw.ClusterBridge, n.ClusterIP},
			{n.hostSvc, nsServiceLink, nw.ServiceBridge, n.ServiceIP},
		} {
			if err := ipCmd("link", "add", l.host, "type", "veth", "peer", "name", l.inNS, "netns", n.NS); err != nil {
				return nw, err
			}
			if err := ipCmd("link", "set", l.host, "master", l.bridge, "up"); err != nil {
				return nw, err
			}
			if err := ipCmd("-n", n.NS, "addr", "add", l.ip+"/24", "dev", l.inNS); err != nil {
				return nw, err
			}
			if err := ipCmd("-n", n.NS, "link", "set", l.inNS, "up"); err != nil {
				return nw, err
			}
		}
	}
	return nw, nil
}

// freeSubnet returns an x such that no address of this machine's root
// namespace is in 10.213.x.0/24 or 10.214.x.0/24.
func freeSubnet() (int, error) {
	out, err := exec.Command("ip", "-4", "-o", "addr", "show").CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("ip addr show: %v: %s", err, out)
	}
	used := string(out)
	for _, x := range mrand.Perm(250) {
		x += 1
		if !strings.Contains(used, fmt.Sprintf(" 10.213.%d.", x)) && !strings.Contains(used, fmt.Sprintf(" 10.214.%d.", x)) {
			return x, nil
		}
	}
	return 0, errors.New("no free subnet in 10.213.0.0/16 and 10.214.0.0/16")
}

// Command returns a command that runs name in node i's namespace (ip netns
// exec, which enters the namespace and then executes name in its own
// process: the command's pid is name's).
func (nw *Network) Command(i int, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", nw.Nodes[i].NS, name}, args...)...)
}

// Cut takes node i's cluster link down at both ends: Raft and request
// forwarding to and from it stop; its API and its way to HostIP stay. With
// full, its service link goes down too: nothing reaches it, and it reaches
// nothing.
func (nw *Network) Cut(i int, full bool) error {
	n := nw.Nodes[i]
	n.mu.Lock()
	defer n.mu.Unlock()
	links := [][2]string{{n.hostClu, nsClusterLink}}
	n.cut = "cluster"
	if full {
		links = append(links, [2]string{n.hostSvc, nsServiceLink})
		n.cut = "full"
	}
	for _, l := range links {
		if err := ipCmd("link", "set", l[0], "down"); err != nil {
			return err
		}
		if err := ipCmd("-n", n.NS, "link", "set", l[1], "down"); err != nil {
			return err
		}
	}
	return nil
}

// Heal brings node i's links up again.
func (nw *Network) Heal(i int) error {
	n := nw.Nodes[i]
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, l := range [][2]string{{n.hostClu, nsClusterLink}, {n.hostSvc, nsServiceLink}} {
		if err := ipCmd("-n", n.NS, "link", "set", l[1], "up"); err != nil {
			return err
		}
		if err := ipCmd("link", "set", l[0], "up"); err != nil {
			return err
		}
	}
	n.cut = ""
	return nil
}

// CutState is "" (connected), "cluster" or "full" for node i.
func (nw *Network) CutState(i int) string {
	n := nw.Nodes[i]
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cut
}

// Pids returns the processes in node i's namespace.
func (nw *Network) Pids(i int) []int {
	out, err := exec.Command("ip", "netns", "pids", nw.Nodes[i].NS).Output()
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// NodeOf returns the index of the node whose service address is ip, or -1.
func (nw *Network) NodeOf(ip string) int {
	for i, n := range nw.Nodes {
		if n.ServiceIP == ip {
			return i
		}
	}
	return -1
}

// Remove ends every process still in the namespaces (by pid: whatever is in
// a namespace of this run was started by this run), then deletes the
// namespaces (and with them their ends of the links), the root ends of the
// links and the bridges. It can be called more than once, and after a
// partial NewNetwork.
func (nw *Network) Remove() {
	if nw == nil {
		return
	}
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if nw.removed {
		return
	}
	nw.removed = true
	for i, n := range nw.Nodes {
		for attempt := 0; attempt < 50; attempt++ {
			pids := nw.Pids(i)
			if len(pids) == 0 {
				break
			}
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			time.Sleep(20 * time.Millisecond)
		}
		_ = ipCmd("netns", "delete", n.NS)
		// Deleting the namespace deletes the veth pairs; these are for a
		// namespace that still had a process in it.
		_ = ipCmdQuiet("link", "delete", n.hostClu)
		_ = ipCmdQuiet("link", "delete", n.hostSvc)
	}
	_ = ipCmdQuiet("link", "delete", nw.ClusterBridge)
	_ = ipCmdQuiet("link", "delete", nw.ServiceBridge)
}

// Leftovers returns what of this network is still on the machine: its
// namespaces, links and bridges (none after Remove).
func (nw *Network) Leftovers() []string {
	var left []string
	out, _ := exec.Command("ip", "-o", "link", "show").Output()
	links := string(out)
	names := []string{nw.ClusterBridge, nw.ServiceBridge}
	for _, n := range nw.Nodes {
		names = append(names, n.hostClu, n.hostSvc)
		if _, err := os.Stat(filepath.Join("/run/netns", n.NS)); err == nil {
			left = append(left, "namespace "+n.NS)
		}
	}
	for _, name := range names {
		if strings.Contains(links, " "+name+":") || strings.Contains(links, " "+name+"@") {
			left = append(left, "link "+name)
		}
	}
	return left
}

func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// ipCmdQuiet is ipCmd for removals of what may already be gone.
func ipCmdQuiet(args ...string) error {
	return exec.Command("ip", args...).Run()
}

// ServeTLS serves h over https on ip (a free port), with a self-signed
// certificate for that address: the plugin accepts http only on loopback,
// and a node's loopback is its own namespace's. It returns the server and
// the certificate in PEM, for the plugin's config ca_certificate.
func ServeTLS(ip string, h http.Handler) (*httptest.Server, string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "fake Ermeo at " + ip},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(7 * 24 * time.Hour),
		IPAddresses:           []net.IP{net.ParseIP(ip)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, "", err
	}
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return nil, "", err
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener.Close()
	srv.Listener = l
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	srv.StartTLS()
	return srv, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), nil
}
