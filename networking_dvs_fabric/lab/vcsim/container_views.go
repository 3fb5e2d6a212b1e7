// Container views that learn of a new object the way vCenter does.
//
// Compiled INTO govmomi's simulator package with incremental_updates.go (see that
// file and lab/vcsim.py); it changes no file of govmomi.
//
// Why: govmomi 0.24's recursive container view decides whether a created object is
// in it by walking the inventory down from its root until it meets the object: a
// view over the root folder walks every folder, cluster, host, pool and VM before
// the network folder, for every object created anywhere, once per view.  With a
// view per API process (the port-group cache) and 4,000 VMs a port group create
// took 20 ms more than with none (measured in NOTES.md, session 23), a cost that
// grew with the inventory where vCenter's does not.  This
// view walks up from the new object instead: its parent, and a VM's pool and host
// (the simulator's own walk reaches VMs through those too).
package simulator

import (
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// LabViewManager makes container views that find new objects by their ancestors.
type LabViewManager struct {
	ViewManager
}

// UseLabViewManager replaces the registry's view manager; call it after Model.Create
// and before serving.
func UseLabViewManager() {
	old := Map.Get(*Map.content().ViewManager).(*ViewManager)
	Map.Put(&LabViewManager{ViewManager: *old})
}

// CreateContainerView makes the simulator's view, then handles its registry events
// itself (the handler keyed by the view's reference is replaced at once: no event
// falls between the two).
func (m *LabViewManager) CreateContainerView(ctx *Context, req *types.CreateContainerView) soap.HasFault {
	res := m.ViewManager.CreateContainerView(ctx, req)
	body, ok := res.(*methods.CreateContainerViewBody)
	if !ok || body.Res == nil {
		return res
	}
	if view, ok := ctx.Session.Get(body.Res.Returnval).(*ContainerView); ok && view.Recursive {
		ctx.Map.AddHandler(ancestorView{view})
	}
	return res
}

// ancestorView is a recursive ContainerView's registry handler: the view itself,
// with a PutObject that walks up from the created object.
type ancestorView struct {
	*ContainerView
}

func (v ancestorView) PutObject(obj mo.Reference) {
	ref := obj.Reference()
	if v.include(ref) && underRoot(v.root.Reference(), obj) {
		Map.Update(v.ContainerView, []types.PropertyChange{{Name: "view", Val: append(v.View, ref)}})
	}
}

// underRoot: is root an ancestor of obj along the simulator's containment (its walk
// in reverse)?  An object's parent; a VM's resource pool and host as well, where set
// (the simulator sets them after it announces a new VM, as its own walk finds them).
func underRoot(root types.ManagedObjectReference, obj mo.Reference) bool {
	seen := map[types.ManagedObjectReference]bool{}
	queue := parentsOf(obj)
	for len(queue) != 0 {
		ref := queue[0]
		queue = queue[1:]
		if ref == root {
			return true
		}
		if seen[ref] {
			continue
		}
		seen[ref] = true
		if parent := Map.Get(ref); parent != nil {
			queue = append(queue, parentsOf(parent)...)
		}
	}
	return false
}

func parentsOf(obj mo.Reference) []types.ManagedObjectReference {
	var out []types.ManagedObjectReference
	if e, ok := obj.(mo.Entity); ok && e.Entity().Parent != nil {
		out = append(out, *e.Entity().Parent)
	}
	if vm, ok := obj.(*VirtualMachine); ok {
		if vm.ResourcePool != nil {
			out = append(out, *vm.ResourcePool)
		}
		if vm.Runtime.Host != nil {
			out = append(out, *vm.Runtime.Host)
		}
	}
	return out
}
