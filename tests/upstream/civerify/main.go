// civerify is the tests' reference consumer: containers/image (go.podman.io/image/v5), the
// library CRI-O pulls with, deciding a pull the way a node does.
//
//	civerify decide --policy P --registries-d D [--registries-conf C] [--arch A] [--authfile F] IMAGE
//	    copies docker://IMAGE as CRI-O's pull does (copy.Image, the instance for the
//	    architecture, mirrors from registries.conf) and prints one JSON line:
//	    {"verdict": "accepted"|"rejected"|"error", "message": "..."}; "rejected" is what
//	    the policy evaluation refused (copy.Image's "Source image rejected"), "error"
//	    anything else (a registry error before it, a policy.json that does not parse). IMAGE with a transport of its own (dir:PATH,
//	    as containers/image's signature fixtures are) is judged by
//	    PolicyContext.IsRunningImageAllowed alone, without a copy.
//	civerify copy [--sign-key K --passphrase-file F] [--sign-identity REF] [--registries-d D] [--all] SRC DEST
//	    copies an image (for example oci:DIR:TAG to docker://HOST/REPO:TAG) with an
//	    accept-anything policy, signing with containers/image's own sigstore signer;
//	    prints the digest of the manifest it wrote.
//	civerify genkey PREFIX PASSPHRASE-FILE
//	    writes PREFIX.key and PREFIX.pub as signature/sigstore.GenerateKeyPair makes them.
//	civerify version
//	    prints the containers/image module and version this program was built with.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"go.podman.io/image/v5/copy"
	"go.podman.io/image/v5/docker/reference"
	"go.podman.io/image/v5/image"
	"go.podman.io/image/v5/manifest"
	"go.podman.io/image/v5/signature"
	"go.podman.io/image/v5/signature/signer"
	"go.podman.io/image/v5/signature/sigstore"
	"go.podman.io/image/v5/transports/alltransports"
	"go.podman.io/image/v5/types"
)

const module = "go.podman.io/image/v5"

func main() {
	if len(os.Args) < 2 {
		usage("a command is required")
	}
	var err error
	switch os.Args[1] {
	case "decide":
		err = decide(os.Args[2:])
	case "copy":
		err = copyImage(os.Args[2:])
	case "genkey":
		err = genkey(os.Args[2:])
	case "version":
		fmt.Println(module, moduleVersion())
	default:
		usage("unknown command " + os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "civerify:", err)
		os.Exit(1)
	}
}

func usage(why string) {
	fmt.Fprintln(os.Stderr, "civerify:", why, "(decide | copy | genkey | version)")
	os.Exit(2)
}

func moduleVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, dep := range info.Deps {
		if dep.Path == module {
			return dep.Version
		}
	}
	return "unknown"
}

type verdict struct {
	Verdict string `json:"verdict"`
	Message string `json:"message"`
}

// decide pulls IMAGE as CRI-O does: copy.Image from the docker transport (which walks the
// registries.conf pull sources, mirrors first) with the node's policy.json and registries.d,
// selecting the instance for the node's platform. The destination is a scratch directory:
// what the policy allows does not depend on where the image goes.
func decide(args []string) error {
	fs := flag.NewFlagSet("decide", flag.ExitOnError)
	policyPath := fs.String("policy", "", "policy.json")
	registriesD := fs.String("registries-d", "", "registries.d directory")
	registriesConf := fs.String("registries-conf", "", "registries.conf (mirrors, insecure registries)")
	arch := fs.String("arch", "amd64", "the node's architecture")
	authfile := fs.String("authfile", "", "containers-auth.json")
	timeout := fs.Duration("timeout", 60*time.Second, "give up after this long")
	_ = fs.Parse(args)
	if fs.NArg() != 1 || *policyPath == "" || *registriesD == "" {
		usage("decide needs --policy, --registries-d and one IMAGE")
	}
	out := func(v verdict) error { return json.NewEncoder(os.Stdout).Encode(v) }

	policy, err := signature.NewPolicyFromFile(*policyPath)
	if err != nil {
		return out(verdict{"error", err.Error()})
	}
	pc, err := signature.NewPolicyContext(policy)
	if err != nil {
		return out(verdict{"error", err.Error()})
	}
	defer func() { _ = pc.Destroy() }()

	if strings.HasPrefix(fs.Arg(0), "dir:") {
		return out(judge(pc, fs.Arg(0)))
	}
	src, err := alltransports.ParseImageName("docker://" + fs.Arg(0))
	if err != nil {
		return out(verdict{"error", err.Error()})
	}
	scratch, err := os.MkdirTemp("", "civerify-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(scratch)
	dest, err := alltransports.ParseImageName("dir:" + filepath.Join(scratch, "image"))
	if err != nil {
		return err
	}
	sys := &types.SystemContext{
		RegistriesDirPath:        *registriesD,
		SystemRegistriesConfPath: *registriesConf,
		ArchitectureChoice:       *arch,
		OSChoice:                 "linux",
		AuthFilePath:             *authfile,
	}
	if *registriesConf == "" {
		// No registries.conf: none of the machine's either.
		sys.SystemRegistriesConfPath = filepath.Join(scratch, "registries.conf")
		sys.SystemRegistriesConfDirPath = filepath.Join(scratch, "registries.conf.d")
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	_, err = copy.Image(ctx, pc, dest, src, &copy.Options{
		SourceCtx:          sys,
		ImageListSelection: copy.CopySystemImage,
	})
	if err == nil {
		return out(verdict{"accepted", ""})
	}
	// copy.Image wraps whatever the policy evaluation refused with this (copy/single.go);
	// a signature that fails verification is not always a PolicyRequirementError.
	var rejected signature.PolicyRequirementError
	if errors.As(err, &rejected) || strings.HasPrefix(err.Error(), "Source image rejected: ") {
		return out(verdict{"rejected", err.Error()})
	}
	return out(verdict{"error", err.Error()})
}

// judge asks the policy about an image in a transport that needs no pull.
func judge(pc *signature.PolicyContext, name string) verdict {
	ref, err := alltransports.ParseImageName(name)
	if err != nil {
		return verdict{"error", err.Error()}
	}
	ctx := context.Background()
	src, err := ref.NewImageSource(ctx, nil)
	if err != nil {
		return verdict{"error", err.Error()}
	}
	defer src.Close()
	allowed, err := pc.IsRunningImageAllowed(ctx, image.UnparsedInstance(src, nil))
	switch {
	case allowed && err == nil:
		return verdict{"accepted", ""}
	case err != nil:
		return verdict{"rejected", err.Error()}
	default:
		return verdict{"rejected", "not allowed"}
	}
}

func copyImage(args []string) error {
	fs := flag.NewFlagSet("copy", flag.ExitOnError)
	key := fs.String("sign-key", "", "sigstore private key (as genkey writes it)")
	passFile := fs.String("passphrase-file", "", "the key's passphrase")
	identity := fs.String("sign-identity", "", "docker reference to sign for (default: the destination)")
	all := fs.Bool("all", false, "copy every instance of a multi-arch image")
	registriesD := fs.String("registries-d", "", "registries.d for the destination (use-sigstore-attachments to write signatures)")
	_ = fs.Parse(args)
	if fs.NArg() != 2 {
		usage("copy needs SRC and DEST")
	}
	src, err := alltransports.ParseImageName(fs.Arg(0))
	if err != nil {
		return err
	}
	dest, err := alltransports.ParseImageName(fs.Arg(1))
	if err != nil {
		return err
	}
	pc, err := signature.NewPolicyContext(&signature.Policy{
		Default: signature.PolicyRequirements{signature.NewPRInsecureAcceptAnything()},
	})
	if err != nil {
		return err
	}
	defer func() { _ = pc.Destroy() }()
	opts := &copy.Options{
		SourceCtx: &types.SystemContext{DockerInsecureSkipTLSVerify: types.OptionalBoolTrue},
		DestinationCtx: &types.SystemContext{
			DockerInsecureSkipTLSVerify: types.OptionalBoolTrue,
			RegistriesDirPath:           *registriesD,
		},
	}
	if *all {
		opts.ImageListSelection = copy.CopyAllImages
	}
	if *key != "" {
		pass, err := os.ReadFile(*passFile)
		if err != nil {
			return err
		}
		s, err := sigstore.NewSigner(sigstore.WithPrivateKeyFile(*key, []byte(strings.TrimRight(string(pass), "\n"))))
		if err != nil {
			return err
		}
		defer s.Close()
		opts.Signers = []*signer.Signer{s}
	}
	if *identity != "" {
		named, err := reference.ParseNamed(*identity)
		if err != nil {
			return err
		}
		opts.SignIdentity = named
	}
	blob, err := copy.Image(context.Background(), pc, dest, src, opts)
	if err != nil {
		return err
	}
	digest, err := manifest.Digest(blob)
	if err != nil {
		return err
	}
	fmt.Println(digest)
	return nil
}

func genkey(args []string) error {
	if len(args) != 2 {
		usage("genkey needs PREFIX and PASSPHRASE-FILE")
	}
	pass, err := os.ReadFile(args[1])
	if err != nil {
		return err
	}
	pair, err := sigstore.GenerateKeyPair([]byte(strings.TrimRight(string(pass), "\n")))
	if err != nil {
		return err
	}
	if err := os.WriteFile(args[0]+".key", pair.PrivateKey, 0o600); err != nil {
		return err
	}
	return os.WriteFile(args[0]+".pub", pair.PublicKey, 0o644)
}
