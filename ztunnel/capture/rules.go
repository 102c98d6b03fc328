package capture

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// TableName is the nftables table (family inet) holding a pod's capture.
const TableName = "regomesh"

// Install puts the capture rules into the pod's namespace, replacing any
// earlier version, in one netlink transaction:
//
//	table inet regomesh {
//	  chain output {       # type nat hook output priority dstnat
//	    meta mark 1337 return            # ztunnel's own sockets
//	    oifname "lo" return              # loopback stays in the pod
//	    meta l4proto tcp redirect to :15001
//	  }
//	  chain prerouting {   # type nat hook prerouting priority dstnat
//	    iifname "lo" return
//	    tcp dport 15008 return           # HBONE goes to ztunnel's own listener
//	    meta l4proto tcp redirect to :15006
//	  }
//	}
func Install(ns *Netns) error {
	c, err := nftables.New(nftables.WithNetNSFd(ns.Fd()))
	if err != nil {
		return fmt.Errorf("capture: nftables in %s: %w", ns.Path(), err)
	}
	table := &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	c.AddTable(table)
	c.DelTable(table) // flush an earlier version in the same transaction
	c.AddTable(table)
	output := natChain(c, table, "output", nftables.ChainHookOutput)
	for _, r := range [][]expr.Any{returnIfMark(), returnIfInterface(expr.MetaKeyOIFNAME, "lo"), redirectTCP(OutboundPort)} {
		c.AddRule(&nftables.Rule{Table: table, Chain: output, Exprs: r})
	}
	prerouting := natChain(c, table, "prerouting", nftables.ChainHookPrerouting)
	for _, r := range [][]expr.Any{returnIfInterface(expr.MetaKeyIIFNAME, "lo"), returnIfTCPPort(HBONEPort), redirectTCP(PlaintextPort)} {
		c.AddRule(&nftables.Rule{Table: table, Chain: prerouting, Exprs: r})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("capture: install rules in %s: %w", ns.Path(), err)
	}
	return nil
}

// Remove deletes the capture table from the pod's namespace; removing
// rules that are not there is not an error.
func Remove(ns *Netns) error {
	c, err := nftables.New(nftables.WithNetNSFd(ns.Fd()))
	if err != nil {
		return fmt.Errorf("capture: nftables in %s: %w", ns.Path(), err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("capture: list tables in %s: %w", ns.Path(), err)
	}
	for _, t := range tables {
		if t.Name == TableName {
			c.DelTable(t)
			if err := c.Flush(); err != nil {
				return fmt.Errorf("capture: remove rules in %s: %w", ns.Path(), err)
			}
		}
	}
	return nil
}

// Installed reports whether the capture table is present.
func Installed(ns *Netns) (bool, error) {
	c, err := nftables.New(nftables.WithNetNSFd(ns.Fd()))
	if err != nil {
		return false, err
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, err
	}
	for _, t := range tables {
		if t.Name == TableName {
			return true, nil
		}
	}
	return false, nil
}

func natChain(c *nftables.Conn, t *nftables.Table, name string, hook *nftables.ChainHook) *nftables.Chain {
	return c.AddChain(&nftables.Chain{
		Name: name, Table: t, Type: nftables.ChainTypeNAT, Hooknum: hook, Priority: nftables.ChainPriorityNATDest,
	})
}

func returnIfMark() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(Mark)},
		&expr.Verdict{Kind: expr.VerdictReturn},
	}
}

func returnIfInterface(key expr.MetaKey, name string) []expr.Any {
	ifname := make([]byte, unix.IFNAMSIZ)
	copy(ifname, name)
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname},
		&expr.Verdict{Kind: expr.VerdictReturn},
	}
}

func returnIfTCPPort(port uint16) []expr.Any {
	return append(isTCP(),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
		&expr.Verdict{Kind: expr.VerdictReturn},
	)
}

func redirectTCP(port uint16) []expr.Any {
	return append(isTCP(),
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
		&expr.Redir{RegisterProtoMin: 1},
	)
}

func isTCP() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
	}
}
