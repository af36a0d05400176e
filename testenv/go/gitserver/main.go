// Command gitserver serves bare repositories under -root over smart HTTP and creates a repository
// on its first request (so `git push $URL/<name>.git` works for a new name).
package main

import (
	"flag"
	"log"
	"net/http"

	"github.com/fluxcd/gitkit"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	root := flag.String("root", "", "directory of bare repositories")
	flag.Parse()
	srv := gitkit.New(gitkit.Config{Dir: *root, AutoCreate: true})
	if err := srv.Setup(); err != nil {
		log.Fatal(err)
	}
	log.Fatal(http.ListenAndServe(*addr, srv))
}
