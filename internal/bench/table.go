package bench

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Table is the report: sections of rows, each section's columns aligned.
type Table struct {
	sections []*section
}

type section struct {
	title string
	rows  [][]string
}

// Section starts a section with a title and a header row (none if empty).
func (t *Table) Section(title string, header ...string) {
	s := &section{title: title}
	if len(header) > 0 {
		s.rows = append(s.rows, header)
	}
	t.sections = append(t.sections, s)
}

// Row adds a row to the last section.
func (t *Table) Row(cells ...string) {
	if len(t.sections) == 0 {
		t.Section("")
	}
	s := t.sections[len(t.sections)-1]
	s.rows = append(s.rows, cells)
}

// Print writes the table to w.
func (t *Table) Print(w io.Writer) {
	for i, s := range t.sections {
		if i > 0 {
			fmt.Fprintln(w)
		}
		if s.title != "" {
			fmt.Fprintln(w, s.title)
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, r := range s.rows {
			fmt.Fprintln(tw, "  "+strings.Join(r, "\t"))
		}
		tw.Flush()
	}
}

// Ms formats a duration in milliseconds.
func Ms(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	switch {
	case ms >= 100:
		return fmt.Sprintf("%.0f ms", ms)
	case ms >= 10:
		return fmt.Sprintf("%.1f ms", ms)
	default:
		return fmt.Sprintf("%.2f ms", ms)
	}
}

// X formats a ratio.
func X(r float64) string { return fmt.Sprintf("%.2fx", r) }

// MB formats a byte count in megabytes.
func MB(b int64) string { return fmt.Sprintf("%.1f MB", float64(b)/(1<<20)) }

// Verdict is "PASS" if ok, else "MISS".
func Verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}
