// helmrender renders a chart the way `helm template` does for the features the s3ferry chart
// uses: Go text/template with the sprig functions, plus helm's include, required, fail, toYaml
// and tpl, values read through JSON (numbers become float64, as in helm), missing keys
// rendering empty. It is not helm: no .Capabilities, lookup, .Files, subcharts, hooks or
// schema validation. It exists because helm cannot be installed where the chart is tested,
// and builds offline from Debian packages (see tests/deploy/test_helm_render.py).
//
// Usage: helmrender CHART_DIR [VALUES_FILE ...]   (manifests on stdout)
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	yaml "gopkg.in/yaml.v3"
)

func loadYAML(path string) map[string]interface{} {
	raw, err := os.ReadFile(path)
	if err != nil {
		panic(err)
	}
	var v interface{}
	if err := yaml.Unmarshal(raw, &v); err != nil {
		panic(err)
	}
	// helm reads values through JSON: numbers become float64, as in helm.
	j, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	var out map[string]interface{}
	if err := json.Unmarshal(j, &out); err != nil {
		panic(err)
	}
	if out == nil {
		out = map[string]interface{}{}
	}
	return out
}

func merge(dst, src map[string]interface{}) {
	for k, v := range src {
		if sm, ok := v.(map[string]interface{}); ok {
			if dm, ok := dst[k].(map[string]interface{}); ok {
				merge(dm, sm)
				continue
			}
		}
		dst[k] = v
	}
}

func toYAML(v interface{}) string {
	// like sigs.k8s.io/yaml: through JSON, so 8388608.0 prints as 8388608
	j, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	var node interface{}
	if err := yaml.Unmarshal(j, &node); err != nil {
		return ""
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(node); err != nil {
		return ""
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: helmrender CHART_DIR [VALUES_FILE ...]")
		os.Exit(2)
	}
	chartDir := os.Args[1]
	chartName := filepath.Base(filepath.Clean(chartDir))
	values := loadYAML(filepath.Join(chartDir, "values.yaml"))
	for _, extra := range os.Args[2:] {
		merge(values, loadYAML(extra))
	}
	chart := loadYAML(filepath.Join(chartDir, "Chart.yaml"))
	chartObj := map[string]interface{}{
		"Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"],
	}
	top := map[string]interface{}{
		"Values":       values,
		"Chart":        chartObj,
		"Release":      map[string]interface{}{"Name": "rel", "Namespace": "default", "Service": "Helm"},
		"Capabilities": map[string]interface{}{},
	}

	t := template.New("gotpl").Option("missingkey=zero")
	funcs := sprig.TxtFuncMap()
	includedNames := map[string]int{}
	funcs["include"] = func(name string, data interface{}) (string, error) {
		includedNames[name]++
		if includedNames[name] > 100 {
			return "", errors.New("recursion")
		}
		var buf bytes.Buffer
		err := t.ExecuteTemplate(&buf, name, data)
		includedNames[name]--
		return buf.String(), err
	}
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil {
			return nil, errors.New(msg)
		}
		if s, ok := v.(string); ok && s == "" {
			return nil, errors.New(msg)
		}
		return v, nil
	}
	funcs["fail"] = func(msg string) (string, error) { return "", errors.New(msg) }
	funcs["toYaml"] = toYAML
	funcs["tpl"] = func(s string, data interface{}) (string, error) {
		tt, err := t.Clone()
		if err != nil {
			return "", err
		}
		tt, err = tt.New("tpl").Parse(s)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = tt.Execute(&buf, data)
		return buf.String(), err
	}
	t.Funcs(funcs)

	tdir := filepath.Join(chartDir, "templates")
	entries, err := os.ReadDir(tdir)
	if err != nil {
		panic(err)
	}
	var names []string
	for _, e := range entries {
		raw, err := os.ReadFile(filepath.Join(tdir, e.Name()))
		if err != nil {
			panic(err)
		}
		name := chartName + "/templates/" + e.Name()
		if _, err := t.New(name).Parse(string(raw)); err != nil {
			fmt.Fprintln(os.Stderr, "parse error:", err)
			os.Exit(2)
		}
		names = append(names, e.Name())
	}
	sort.Strings(names)
	for _, n := range names {
		if strings.HasPrefix(n, "_") || !strings.HasSuffix(n, ".yaml") {
			continue
		}
		data := map[string]interface{}{}
		for k, v := range top {
			data[k] = v
		}
		data["Template"] = map[string]interface{}{
			"Name": chartName + "/templates/" + n, "BasePath": chartName + "/templates",
		}
		var buf bytes.Buffer
		if err := t.ExecuteTemplate(&buf, chartName+"/templates/"+n, data); err != nil {
			fmt.Fprintln(os.Stderr, "render error:", err)
			os.Exit(3)
		}
		out := strings.ReplaceAll(buf.String(), "<no value>", "")
		if strings.TrimSpace(out) == "" {
			continue
		}
		fmt.Printf("---\n# Source: %s/templates/%s\n%s\n", chartName, n, strings.TrimSpace(out))
	}
}
