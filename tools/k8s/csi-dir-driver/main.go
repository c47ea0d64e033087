// Command csi-dir-driver is lanex's stand-in for csi-driver-host-path, whose module the Go proxy
// here does not serve (every tag answers 403 "This module version is not available"). It is a CSI
// controller plugin and nothing more: volumes and snapshots are directories under --state-dir, so
// the real csi-provisioner, csi-snapshotter and snapshot-controller have a driver to talk to over
// the CSI gRPC API. Pods run nothing on this cluster (kwok), so there is no node service.
package main

import (
	"context"
	"flag"
	"fmt"
	"io/fs"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const version = "0.1.0"

type driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	name     string
	stateDir string
	mu       sync.Mutex // one CSI call changes the state directory at a time
}

func (d *driver) volumePath(id string) string   { return filepath.Join(d.stateDir, "volumes", id) }
func (d *driver) snapshotPath(id string) string { return filepath.Join(d.stateDir, "snapshots", id) }

// safeID refuses IDs that could leave the state directory: they come from API objects.
func safeID(id string) error {
	if id == "" || strings.ContainsAny(id, "/\\") || id == "." || id == ".." {
		return status.Errorf(codes.InvalidArgument, "invalid id %q", id)
	}
	return nil
}

func (d *driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: d.name, VendorVersion: version}, nil
}

func (d *driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{{
		Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{
			Type: csi.PluginCapability_Service_CONTROLLER_SERVICE}},
	}}}, nil
}

func (d *driver) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{}, nil
}

func (d *driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var capabilities []*csi.ControllerServiceCapability
	for _, c := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
	} {
		capabilities = append(capabilities, &csi.ControllerServiceCapability{
			Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: c}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: capabilities}, nil
}

func (d *driver) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if err := safeID(req.GetName()); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	target := d.volumePath(req.GetName())
	capacity := req.GetCapacityRange().GetRequiredBytes()
	volume := &csi.Volume{VolumeId: req.GetName(), CapacityBytes: capacity, ContentSource: req.GetVolumeContentSource()}
	if _, err := os.Stat(target); err == nil { // CSI calls are retried: the same name is the same volume
		return &csi.CreateVolumeResponse{Volume: volume}, nil
	}
	source := ""
	switch content := req.GetVolumeContentSource().GetType().(type) {
	case *csi.VolumeContentSource_Snapshot:
		source = d.snapshotPath(content.Snapshot.GetSnapshotId())
	case *csi.VolumeContentSource_Volume:
		source = d.volumePath(content.Volume.GetVolumeId())
	}
	if source != "" {
		if _, err := os.Stat(source); err != nil {
			return nil, status.Errorf(codes.NotFound, "content source %s: %v", filepath.Base(source), err)
		}
		if err := copyTree(source, target); err != nil {
			return nil, status.Errorf(codes.Internal, "restore into %s: %v", req.GetName(), err)
		}
	} else if err := os.MkdirAll(target, 0o755); err != nil {
		return nil, status.Errorf(codes.Internal, "create %s: %v", req.GetName(), err)
	}
	log.Printf("CreateVolume %s (%d bytes) from %q", req.GetName(), capacity, source)
	return &csi.CreateVolumeResponse{Volume: volume}, nil
}

func (d *driver) DeleteVolume(_ context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	if err := safeID(req.GetVolumeId()); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	log.Printf("DeleteVolume %s", req.GetVolumeId())
	return &csi.DeleteVolumeResponse{}, os.RemoveAll(d.volumePath(req.GetVolumeId()))
}

func (d *driver) ValidateVolumeCapabilities(_ context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeCapabilities: req.GetVolumeCapabilities()}}, nil
}

func (d *driver) CreateSnapshot(_ context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if err := safeID(req.GetName()); err != nil {
		return nil, err
	}
	if err := safeID(req.GetSourceVolumeId()); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	target := d.snapshotPath(req.GetName())
	if _, err := os.Stat(target); err != nil {
		if err := copyTree(d.volumePath(req.GetSourceVolumeId()), target); err != nil {
			return nil, status.Errorf(codes.Internal, "snapshot %s of %s: %v", req.GetName(), req.GetSourceVolumeId(), err)
		}
		log.Printf("CreateSnapshot %s of %s", req.GetName(), req.GetSourceVolumeId())
	}
	return &csi.CreateSnapshotResponse{Snapshot: d.snapshot(req.GetName(), req.GetSourceVolumeId())}, nil
}

func (d *driver) snapshot(id, sourceVolume string) *csi.Snapshot {
	created := time.Now()
	if info, err := os.Stat(d.snapshotPath(id)); err == nil {
		created = info.ModTime()
	}
	return &csi.Snapshot{SnapshotId: id, SourceVolumeId: sourceVolume, CreationTime: timestamppb.New(created),
		ReadyToUse: true, SizeBytes: treeSize(d.snapshotPath(id))}
}

func (d *driver) DeleteSnapshot(_ context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	if err := safeID(req.GetSnapshotId()); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	log.Printf("DeleteSnapshot %s", req.GetSnapshotId())
	return &csi.DeleteSnapshotResponse{}, os.RemoveAll(d.snapshotPath(req.GetSnapshotId()))
}

func (d *driver) ListSnapshots(_ context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	entries, _ := os.ReadDir(filepath.Join(d.stateDir, "snapshots"))
	var found []*csi.ListSnapshotsResponse_Entry
	for _, entry := range entries {
		if req.GetSnapshotId() != "" && entry.Name() != req.GetSnapshotId() {
			continue
		}
		found = append(found, &csi.ListSnapshotsResponse_Entry{Snapshot: d.snapshot(entry.Name(), req.GetSourceVolumeId())})
	}
	return &csi.ListSnapshotsResponse{Entries: found}, nil
}

// copyTree copies regular files and directories; a copy, not links, so that a snapshot is immutable.
func copyTree(source, target string) error {
	return filepath.WalkDir(source, func(path string, entry fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		relative, _ := filepath.Rel(source, path)
		destination := filepath.Join(target, relative)
		if entry.IsDir() {
			return os.MkdirAll(destination, 0o755)
		}
		if !entry.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(destination, data, 0o644)
	})
}

func treeSize(root string) int64 {
	var size int64
	_ = filepath.WalkDir(root, func(_ string, entry fs.DirEntry, err error) error {
		if err == nil && entry.Type().IsRegular() {
			if info, statErr := entry.Info(); statErr == nil {
				size += info.Size()
			}
		}
		return nil
	})
	return size
}

func main() {
	endpoint := flag.String("endpoint", "", "unix socket to serve CSI on, e.g. unix:///tmp/csi.sock")
	name := flag.String("drivername", "dir.csi.lanex.dev", "CSI driver name")
	stateDir := flag.String("state-dir", "", "directory that holds the volumes and snapshots")
	flag.Parse()
	socket := strings.TrimPrefix(*endpoint, "unix://")
	if socket == "" || *stateDir == "" {
		log.Fatal("--endpoint=unix://PATH and --state-dir are required")
	}
	_ = os.Remove(socket)
	listener, err := net.Listen("unix", socket)
	if err != nil {
		log.Fatalf("listen on %s: %v", socket, err)
	}
	server := grpc.NewServer()
	plugin := &driver{name: *name, stateDir: *stateDir}
	csi.RegisterIdentityServer(server, plugin)
	csi.RegisterControllerServer(server, plugin)
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() { <-signals; server.GracefulStop() }()
	fmt.Fprintf(os.Stderr, "csi-dir-driver %s serving %s on %s\n", version, *name, socket)
	if err := server.Serve(listener); err != nil {
		log.Fatal(err)
	}
}
