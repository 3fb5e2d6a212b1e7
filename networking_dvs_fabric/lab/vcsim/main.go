// Command vcsim serves a small simulated vCenter for the networking-dvs-fabric lab.
//
// Inventory: DC0 with clusters DC0_C0 and DC0_C1 (hosts DC0_Cn_H0..H2), the
// distributed switch DVS0 (all six hosts, port group DC0_DVPG0) and two VMs
// per cluster. Built from govmomi's simulator package (GOPATH mode), with
// incremental_updates.go added to that package by the build's overlay.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/vmware/govmomi/simulator"
)

type options struct {
	listen, username, password, certFile, keyFile, addressFile string
}

func main() {
	var opt options
	flag.StringVar(&opt.listen, "listen", "127.0.0.1:0", "host:port to listen on (port 0 picks a free one)")
	flag.StringVar(&opt.username, "username", "", "accepted user name (empty: any non-empty credentials)")
	flag.StringVar(&opt.password, "password", "", "accepted password")
	flag.StringVar(&opt.certFile, "cert", "", "PEM certificate (with -key: serve https, else plain http)")
	flag.StringVar(&opt.keyFile, "key", "", "PEM private key for -cert")
	flag.DurationVar(&simulator.SessionIdleTimeout, "session-idle-timeout", 0, "expire idle sessions after this long (0: never)")
	flag.StringVar(&opt.addressFile, "address-file", "", "write the SDK URL here once listening")
	flag.Parse()

	if err := run(opt); err != nil {
		log.Printf("vcsim: %v", err)
		os.Exit(1)
	}
}

func run(opt options) (err error) {
	if (opt.certFile == "") != (opt.keyFile == "") {
		return fmt.Errorf("-cert and -key must be given together")
	}
	model := simulator.VPX()
	model.Host = 0 // no standalone hosts
	model.Cluster = 2
	model.ClusterHost = 3
	model.Portgroup = 1 // creates DVS0 with every host, and DC0_DVPG0
	model.Machine = 2
	if err := model.Create(); err != nil {
		return fmt.Errorf("creating the inventory: %w", err)
	}
	defer model.Remove()
	simulator.UseIncrementalCollector() // incremental_updates.go, compiled into the package
	simulator.UseLabViewManager()       // container_views.go, likewise

	model.Service.Listen = &url.URL{Host: opt.listen}
	if opt.username != "" {
		model.Service.Listen.User = url.UserPassword(opt.username, opt.password)
	}
	if opt.certFile != "" {
		pair, err := tls.LoadX509KeyPair(opt.certFile, opt.keyFile)
		if err != nil {
			return fmt.Errorf("loading the certificate: %w", err)
		}
		model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	}

	defer func() { // NewServer panics when it cannot listen
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	server := model.Service.NewServer()
	defer server.Close()

	address := *server.URL
	address.User = nil
	if opt.addressFile != "" {
		if err := writeAtomic(opt.addressFile, address.String()+"\n"); err != nil {
			return fmt.Errorf("writing the address file: %w", err)
		}
	}
	log.Printf("vcsim listening on %s (session idle timeout %v)", address.String(), simulator.SessionIdleTimeout)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	log.Printf("vcsim stopping on %v", <-stop)
	return nil
}

// writeAtomic writes text to a temporary file beside path and renames it into place.
func writeAtomic(path, text string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	_, err = tmp.WriteString(text)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), path)
}
