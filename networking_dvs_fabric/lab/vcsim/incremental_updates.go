// Incremental property collector updates for the lab's vCenter simulator.
//
// This file is compiled INTO govmomi's simulator package (package simulator), added
// by `go build -overlay` (see lab/vcsim.py), so that it can reach the collector's
// and the filters' unexported state; it changes no file of govmomi.
//
// Why: govmomi 0.24's simulator answers a waiting WaitForUpdatesEx by re-collecting
// every filter of the collector, whole, once per filter for every queued change of
// any object in the inventory. A watch over 5,000 VMs therefore re-reads all of them
// five times per relocate, and every waiting collector of every client pays the same
// for every change anywhere: the lab's times grew with the size of the inventory
// where vCenter's do not (vCenter computes updates incrementally). This collector
// does what vCenter does: a change to an object a filter already reports becomes
// that object's changed properties; only a created object, or a change to an object
// the filter's traversal passes through, makes it look for objects that entered,
// and then it reads the properties of those new objects only.
package simulator

import (
	"context"
	"log"
	"reflect"
	"sync"
	"time"

	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// IncrementalCollector is the simulator's PropertyCollector with incremental updates.
// Embedded by value: the simulator makes per-session copies of the root collector
// with reflect.New of its type, and a zero value must work.
type IncrementalCollector struct {
	PropertyCollector

	computing sync.Mutex                            // one update computation at a time
	reported  map[types.ManagedObjectReference]bool // filters whose objects were all reported once
}

// UseIncrementalCollector replaces the root property collector of the registry; call
// it after Model.Create and before serving.
func UseIncrementalCollector() {
	ref := Map.content().PropertyCollector
	ic := &IncrementalCollector{}
	ic.Self = ref
	Map.Put(ic)
}

// CreatePropertyCollector makes collectors of this kind too.
func (ic *IncrementalCollector) CreatePropertyCollector(ctx *Context, c *types.CreatePropertyCollector) soap.HasFault {
	ic2 := &IncrementalCollector{}
	ic2.Self.Type = "PropertyCollector" // not the Go type's name
	return &methods.CreatePropertyCollectorBody{
		Res: &types.CreatePropertyCollectorResponse{
			Returnval: ctx.Session.Put(ic2).Reference(),
		},
	}
}

// WaitForUpdates (the deprecated form) goes through the incremental WaitForUpdatesEx.
func (ic *IncrementalCollector) WaitForUpdates(ctx *Context, r *types.WaitForUpdates) soap.HasFault {
	body := &methods.WaitForUpdatesBody{}
	res := ic.WaitForUpdatesEx(ctx, &types.WaitForUpdatesEx{This: r.This, Version: r.Version})
	if res.Fault() != nil {
		body.Fault_ = res.Fault()
	} else {
		body.Res = &types.WaitForUpdatesResponse{
			Returnval: *res.(*methods.WaitForUpdatesExBody).Res.Returnval,
		}
	}
	return body
}

// WaitForUpdatesEx: the first call (no version) reports every object of every filter
// and starts listening; later calls wait for changes and report them incrementally.
func (ic *IncrementalCollector) WaitForUpdatesEx(ctx *Context, r *types.WaitForUpdatesEx) soap.HasFault {
	pc := &ic.PropertyCollector
	if r.Version == "" {
		return ic.firstUpdate(ctx, r)
	}

	wait, cancel := context.WithCancel(context.Background())
	oneUpdate := false
	if r.Options != nil && r.Options.MaxWaitSeconds != nil {
		max := *r.Options.MaxWaitSeconds
		oneUpdate = max == 0
		if max > 0 {
			wait, cancel = context.WithTimeout(context.Background(), time.Second*time.Duration(max))
		}
	}
	defer cancel()
	pc.mu.Lock()
	pc.cancel = cancel
	pc.mu.Unlock()

	set := &types.UpdateSet{Version: r.Version}
	body := &methods.WaitForUpdatesExBody{Res: &types.WaitForUpdatesExResponse{Returnval: set}}

	ticker := time.NewTicker(250 * time.Millisecond) // as the simulator: let changes gather
	defer ticker.Stop()
	for {
		select {
		case <-wait.Done():
			body.Res.Returnval = nil
			if wait.Err() == context.Canceled {
				body.Fault_ = Fault("", new(types.RequestCanceled))
				body.Res = nil
			}
			return body
		case <-ticker.C:
			pc.mu.Lock()
			updates := pc.updates
			pc.updates = nil
			pc.mu.Unlock()
			ic.computing.Lock()
			var fault types.BaseMethodFault
			if len(updates) != 0 || ic.hasNewFilter() {
				fault = ic.applyIncrementally(ctx, updates, set)
			}
			ic.computing.Unlock()
			if fault != nil {
				body.Fault_ = Fault("", fault)
				body.Res = nil
				return body
			}
			if len(set.FilterSet) != 0 {
				return body
			}
			if oneUpdate {
				body.Res.Returnval = nil
				return body
			}
		}
	}
}

// firstUpdate is the simulator's own first answer (every object of every filter).
// The collector listens to the registry's changes from before that read (govmomi
// starts after it): a change made while thousands of VMs are read is reported by the
// next wait, not lost (an object's change already in the answer is harmless twice).
func (ic *IncrementalCollector) firstUpdate(ctx *Context, r *types.WaitForUpdatesEx) soap.HasFault {
	pc := &ic.PropertyCollector
	set := &types.UpdateSet{Version: r.Version}
	body := &methods.WaitForUpdatesExBody{Res: &types.WaitForUpdatesExResponse{Returnval: set}}
	ic.computing.Lock()
	defer ic.computing.Unlock()
	filters := append([]types.ManagedObjectReference(nil), pc.Filter...) // those read now
	ctx.Map.AddHandler(pc)
	if fault := pc.apply(ctx, set); fault != nil {
		body.Fault_ = Fault("", fault)
		body.Res = nil
		return body
	}
	for _, ref := range filters {
		ic.markReported(ref)
	}
	set.Version = "-"
	return body
}

func (ic *IncrementalCollector) markReported(filter types.ManagedObjectReference) {
	if ic.reported == nil {
		ic.reported = map[types.ManagedObjectReference]bool{}
	}
	ic.reported[filter] = true
}

// forgetDestroyed drops the marks of filters destroyed since.
func (ic *IncrementalCollector) forgetDestroyed() {
	if len(ic.reported) <= len(ic.Filter) {
		return
	}
	current := map[types.ManagedObjectReference]bool{}
	for _, ref := range ic.Filter {
		current[ref] = true
	}
	for ref := range ic.reported {
		if !current[ref] {
			delete(ic.reported, ref)
		}
	}
}

// hasNewFilter: was a filter created since the last answer? Its objects are due.
func (ic *IncrementalCollector) hasNewFilter() bool {
	for _, ref := range ic.Filter {
		if !ic.reported[ref] {
			return true
		}
	}
	return false
}

// applyIncrementally adds to set what the queued changes mean to each filter.
func (ic *IncrementalCollector) applyIncrementally(ctx *Context, updates []types.ObjectUpdate, set *types.UpdateSet) types.BaseMethodFault {
	pc := &ic.PropertyCollector
	ic.forgetDestroyed()
	for _, ref := range pc.Filter {
		filter, ok := ctx.Session.Get(ref).(*PropertyFilter)
		if !ok {
			continue // destroyed meanwhile
		}
		fu := types.PropertyFilterUpdate{Filter: ref}

		if !ic.reported[ref] || mayReachNew(ctx, filter, updates) {
			ic.markReported(ref)
			objects, fault := enteredObjects(ctx, filter)
			if fault != nil {
				return fault
			}
			for _, o := range objects {
				filter.refs[o.Obj] = struct{}{}
				change := types.ObjectUpdate{Obj: o.Obj, Kind: types.ObjectUpdateKindEnter}
				for _, p := range o.PropSet {
					change.ChangeSet = append(change.ChangeSet, types.PropertyChange{
						Op: types.PropertyChangeOpAssign, Name: p.Name, Val: p.Val})
				}
				fu.ObjectSet = append(fu.ObjectSet, change)
			}
		}

		for _, update := range updates {
			if _, known := filter.refs[update.Obj]; !known {
				continue
			}
			switch update.Kind {
			case types.ObjectUpdateKindModify:
				// Also for an object that entered just now, as the simulator always
				// did: a client may act on the change itself (a power-on, say).
				if change := filter.apply(ctx, update); len(change.ChangeSet) != 0 {
					fu.ObjectSet = append(fu.ObjectSet, change)
				}
			case types.ObjectUpdateKindLeave:
				delete(filter.refs, update.Obj)
				fu.ObjectSet = append(fu.ObjectSet, update)
			}
		}
		if len(fu.ObjectSet) != 0 {
			set.FilterSet = append(set.FilterSet, fu)
		}
	}
	return nil
}

// mayReachNew: can these changes have brought an object into the filter? Yes for a
// created object of a type the filter reports or its traversal passes through, and
// for a change to a filter's root object or to an object of a type its traversal
// passes through; anything else cannot (a task, or a port group, made beside a watch
// of VMs brings no VM into it).  Limit: the simulator also edits some reference lists
// without an update (a host's and a pool's "vm" when a VM is made, after its creation
// was announced); a filter that traverses those finds such a VM at the next creation
// of a type it reports or traverses, or traversal change.  The lab's filters traverse
// container views, whose changes come with the creation.
func mayReachNew(ctx *Context, filter *PropertyFilter, updates []types.ObjectUpdate) bool {
	for _, update := range updates {
		switch update.Kind {
		case types.ObjectUpdateKindEnter:
			if reportedBy(ctx, filter.Spec, update.Obj) || traversedBy(ctx, filter.Spec, update.Obj) {
				return true
			}
		case types.ObjectUpdateKindModify:
			if traversedBy(ctx, filter.Spec, update.Obj) {
				return true
			}
		}
	}
	return false
}

// isA returns whether ref's object is of the named managed type, itself or by
// embedding (e.g. Network inside DistributedVirtualPortgroup); the object's Go type
// is looked up once, on first need.  An object already gone is of no type.
func isA(ctx *Context, ref types.ManagedObjectReference) func(string) bool {
	var kind reflect.Type
	return func(name string) bool {
		if name == ref.Type {
			return true
		}
		if kind == nil {
			obj := ctx.Map.Get(ref)
			if obj == nil {
				return false
			}
			kind = getManagedObject(obj).Type()
		}
		field, ok := kind.FieldByName(name)
		return ok && field.Anonymous
	}
}

// reportedBy: does one of the filter's property specs name ref's type?
func reportedBy(ctx *Context, spec types.PropertyFilterSpec, ref types.ManagedObjectReference) bool {
	is := isA(ctx, ref)
	for _, p := range spec.PropSet {
		if is(p.Type) {
			return true
		}
	}
	return false
}

func traversedBy(ctx *Context, spec types.PropertyFilterSpec, ref types.ManagedObjectReference) bool {
	is := isA(ctx, ref)
	var walk func([]types.BaseSelectionSpec) bool
	walk = func(selections []types.BaseSelectionSpec) bool {
		for _, s := range selections {
			if ts, ok := s.(*types.TraversalSpec); ok {
				if is(ts.Type) || walk(ts.SelectSet) {
					return true
				}
			}
		}
		return false
	}
	for _, o := range spec.ObjectSet {
		if len(o.SelectSet) != 0 && o.Obj == ref {
			return true
		}
		if walk(o.SelectSet) {
			return true
		}
	}
	return false
}

// enteredObjects: the objects the filter reaches now and has not reported yet, with
// the filter's properties. The traversal reads references only; properties are read
// for the new objects alone.
func enteredObjects(ctx *Context, filter *PropertyFilter) ([]types.ObjectContent, types.BaseMethodFault) {
	spec := filter.Spec
	rr := &retrieveResult{
		RetrieveResult: &types.RetrieveResult{},
		req:            &types.RetrievePropertiesEx{SpecSet: []types.PropertyFilterSpec{spec}},
		collected:      make(map[types.ManagedObjectReference]bool),
		specs:          make(map[string]*types.TraversalSpec),
	}
	var refs []types.ManagedObjectReference
	for _, o := range spec.ObjectSet {
		var rval reflect.Value
		ok := false
		ctx.WithLock(o.Obj, func() { rval, ok = getObject(ctx, o.Obj) })
		if !ok {
			if isFalse(spec.ReportMissingObjectsInResults) {
				return nil, &types.ManagedObjectNotFound{Obj: o.Obj}
			}
			continue
		}
		if o.SelectSet == nil || isFalse(o.Skip) {
			refs = append(refs, o.Obj)
		}
		if fault := rr.selectSet(ctx, rval, o.SelectSet, &refs); fault != nil {
			return nil, fault
		}
	}
	for _, ref := range refs {
		if _, known := filter.refs[ref]; known {
			continue
		}
		ctx.WithLock(ref, func() { rr.collect(ctx, ref) })
	}
	if len(rr.Objects) != 0 {
		log.Printf("%s: %d objects entered filter %s", filter.pc.Self, len(rr.Objects), filter.Self)
	}
	return rr.Objects, nil
}
