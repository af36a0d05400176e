// Command probe shows, from inside a pod, what the pod's network lets it do:
//
//	probe resolve NAME        the addresses NAME resolves to, one per line
//	probe get URL             GET URL once: "status <code>" and the first 2000 bytes of the body
//	probe connect HOST:PORT   one TCP connection: "connected" or the error
//	probe serve PORT          an HTTP server answering "probe" on every path
//
// An option before the check: -within SECONDS repeats a failed check every second until it
// succeeds or that time has passed (the default 0: once), for what is true eventually (a name
// once its Service's endpoints are programmed, a source once a policy engine has seen it).
//
// Each check exits 0 on success and 1 on failure, with the reason on stdout, so that a test reads
// the pod's log. One attempt gives up after five seconds.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

const timeout = 5 * time.Second

func main() {
	within := flag.Int("within", 0, "seconds to repeat a failed check for")
	flag.Parse()
	if flag.NArg() != 2 {
		fmt.Println("usage: probe [-within S] resolve NAME | get URL | connect HOST:PORT | serve PORT")
		os.Exit(2)
	}
	check, arg := flag.Arg(0), flag.Arg(1)
	deadline := time.Now().Add(time.Duration(*within) * time.Second)
	for {
		err := run(check, arg)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			fmt.Printf("failed: %v\n", err)
			os.Exit(1)
		}
		time.Sleep(time.Second)
	}
}

func run(check, arg string) error {
	switch check {
	case "resolve":
		return resolve(arg)
	case "get":
		return get(arg)
	case "connect":
		return connect(arg)
	case "serve":
		return serve(arg)
	default:
		return fmt.Errorf("unknown check %q", check)
	}
}

func resolve(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupHost(ctx, name)
	if err != nil {
		return err
	}
	for _, a := range addrs {
		fmt.Println(a)
	}
	return nil
}

func get(url string) error {
	client := &http.Client{
		Timeout: timeout,
		// Report a redirect rather than follow it.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 2000))
	fmt.Printf("status %d\n%s\n", resp.StatusCode, body)
	return nil
}

func connect(address string) error {
	conn, err := net.DialTimeout("tcp", address, timeout)
	if err != nil {
		return err
	}
	conn.Close()
	fmt.Println("connected")
	return nil
}

func serve(port string) error {
	http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "probe") })
	return http.ListenAndServe(":"+port, nil)
}
