// zipstandin makes the archive/zip calls rke-tools makes, with Go's own library:
//
//	zipstandin zip OUTPUT.zip INPUT...   as compressFiles/AddFileToZip: FileInfoHeader, the
//	                                     full path as the entry name, Method Deflate (at
//	                                     compress/flate's default level), io.Copy; prints the
//	                                     seconds spent writing the archive (bench/etcd_archive.py)
//	zipstandin unzip INPUT.zip NAME DEST as decompressFile: the entry named exactly NAME,
//	                                     io.Copy to DEST (tests/etcd/test_archive.py: Go reads
//	                                     sidekick's archives, its CRC-32 check included)
package main

import (
	"archive/zip"
	"fmt"
	"io"
	"os"
	"time"
)

func addFile(w *zip.Writer, name string) error {
	in, err := os.Open(name)
	if err != nil {
		return err
	}
	defer in.Close()
	info, err := in.Stat()
	if err != nil {
		return err
	}
	header, err := zip.FileInfoHeader(info)
	if err != nil {
		return err
	}
	header.Name = name
	header.Method = zip.Deflate
	header.Modified = time.Unix(0, 0)
	entry, err := w.CreateHeader(header)
	if err != nil {
		return err
	}
	_, err = io.Copy(entry, in)
	return err
}

func write(output string, inputs []string) error {
	out, err := os.Create(output)
	if err != nil {
		return err
	}
	w := zip.NewWriter(out)
	for _, name := range inputs {
		if err := addFile(w, name); err != nil {
			out.Close()
			return err
		}
	}
	if err := w.Close(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func extract(input string, name string, dest string) error {
	r, err := zip.OpenReader(input)
	if err != nil {
		return err
	}
	defer r.Close()
	for _, f := range r.File {
		if f.Name != name {
			continue
		}
		out, err := os.OpenFile(dest, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, f.Mode())
		if err != nil {
			return err
		}
		entry, err := f.Open()
		if err != nil {
			out.Close()
			return err
		}
		_, err = io.Copy(out, entry)
		entry.Close()
		if err != nil {
			out.Close()
			return err
		}
		return out.Close()
	}
	return fmt.Errorf("%s: no entry named %s", input, name)
}

func main() {
	var err error
	switch {
	case len(os.Args) >= 4 && os.Args[1] == "zip":
		start := time.Now()
		if err = write(os.Args[2], os.Args[3:]); err == nil {
			fmt.Printf("%.6f\n", time.Since(start).Seconds())
		}
	case len(os.Args) == 5 && os.Args[1] == "unzip":
		err = extract(os.Args[2], os.Args[3], os.Args[4])
	default:
		fmt.Fprintln(os.Stderr, "usage: zipstandin zip OUTPUT.zip INPUT... | zipstandin unzip INPUT.zip NAME DEST")
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
