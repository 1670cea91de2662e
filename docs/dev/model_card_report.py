"""Combine eval JSONs into the model card's tables and the Fig. 5 plot."""
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

NAMES = {"runs/safnet/model_last.pt": "SAFNet, full", "runs/safnet_no_csm/model_last.pt": "SAFNet w/o CSM",
         "runs/concat/model_last.pt": "concat late fusion (eq. 1)", "runs/pointnet2/model_last.pt": "PointNet++ 3D only",
         "shipped_orig.pt": "previous default (w/o CSM, layout 1)"}
ORDER = list(NAMES.values())

def load(files):
    out = {}
    for f in files:
        d = json.load(open(f))
        ms = d["models"] if "models" in d else [d]
        for m in (ms.values() if isinstance(ms, dict) else ms):
            out[NAMES.get(m["model"], m["model"])] = m
    return out

def table(models, title):
    print(f"\n{title}\n")
    print("| model | mIoU 1 view | mIoU 3 views | mIoU 5 views | OA (3 views) | 1 view − 5 views |")
    print("|---|---|---|---|---|---|")
    for name in ORDER:
        if name not in models: continue
        m = models[name]; b = m["by_views"]
        print(f"| {name} | {100*b['1']:.1f} | {100*b['3']:.1f} | {100*b['5']:.1f} | {100*m['oa_by_views']['3']:.1f} | {100*(b['1']-b['5']):+.1f} |")

def per_class(models, title, views="3"):
    names = [n for n in ORDER if n in models]
    print(f"\n{title}\n")
    print("| class | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    classes = list(models[names[0]]["per_class_by_views"][views])
    for c in classes:
        vals = [models[n]['per_class_by_views'][views].get(c) for n in names]
        print(f"| {c} | " + " | ".join("–" if v is None else f"{100*v:.1f}" for v in vals) + " |")

def plot(sets, path):
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4), squeeze=False)
    for ax, (title, models) in zip(axes[0], sets):
        for name in ORDER:
            if name not in models: continue
            b = models[name]["by_views"]; ks = sorted(int(k) for k in b)
            ax.plot(ks, [100 * b[str(k)] for k in ks], marker="o", label=name)
        ax.set_xlabel("test views per chunk"); ax.set_ylabel("mIoU (%)"); ax.set_title(title); ax.set_xticks([1, 3, 5])
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout(); fig.savefig(path, dpi=110)

if __name__ == "__main__":
    old = load([f for f in sys.argv[1:] if "pre13" not in f])
    new = load([f for f in sys.argv[1:] if "pre13" in f])
    table(old, "held-out rooms of the previous generator (seed 7)")
    if new: table(new, "held-out realistic rooms (issue 13 generator)")
    per_class(old, "per class, previous-generator rooms, 3 views")
    if new: per_class(new, "per class, realistic rooms, 3 views")
    plot([("held-out rooms, seed 7 (training generator)", old)] + ([("realistic rooms (issue 13 generator)", new)] if new else []),
         "/work/wt/i14/docs/images/model_card_views_sweep.png")
