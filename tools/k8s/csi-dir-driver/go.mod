// lanex's own CSI controller plugin (main.go), the stand-in for csi-driver-host-path, whose module
// the Go proxy here refuses; built like the upstream components, with its dependencies pinned.
module lanex.dev/tools/k8s/csi-dir-driver

go 1.26.0

require (
	github.com/container-storage-interface/spec v1.12.0
	google.golang.org/grpc v1.57.1
	google.golang.org/protobuf v1.33.0
)

require (
	github.com/golang/protobuf v1.5.4 // indirect
	golang.org/x/net v0.38.0 // indirect
	golang.org/x/sys v0.31.0 // indirect
	golang.org/x/text v0.23.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20230803162519-f966b187b2e5 // indirect
)

tool lanex.dev/tools/k8s/csi-dir-driver
